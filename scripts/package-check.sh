#!/usr/bin/env bash
# Checks the library crate as crates.io would get it: `cargo package -p bufring` (which also
# builds the packaged crate with default features), then, in the unpacked .crate outside the
# workspace, the crate's own tests with every feature (kernel tests, kernel-model tests, unit
# tests, README doctests) and its docs with warnings as errors.
#
#   scripts/package-check.sh                # as CI runs it (a clean checkout)
#   scripts/package-check.sh --allow-dirty  # with uncommitted changes (extra args go to
#                                           # `cargo package`)
#
# Not in the crate, so not checked here: tests/hostile_completions.rs (it replays the fuzz
# corpus in the repository's fuzz/ directory; `cargo test --workspace` runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "bufring"))')
echo "== cargo package -p bufring ($version)"
cargo package -p bufring --locked "$@"
crate="target/package/bufring-$version.crate"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp"
dir="$tmp/bufring-$version"
# `cargo package` stamps every file with one fixed old mtime (2006), so against the kept build
# below cargo would take the changed sources for unchanged and reuse a stale library (seen: the
# tests of a new API failed to compile against the previous build). Now is their mtime.
find "$dir" -type f -exec touch {} +
# The unpacked crate is its own workspace; keep its build next to the others so reruns are
# incremental.
export CARGO_TARGET_DIR="$PWD/target/package-check"

echo "== the packaged crate's tests, outside the workspace (cargo test --all-features)"
(cd "$dir" && cargo test --locked --all-features)

echo "== the packaged crate's docs (cargo doc --no-deps, warnings denied)"
(cd "$dir" && RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --all-features)
