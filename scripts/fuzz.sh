#!/usr/bin/env bash
# Coverage-guided fuzzing of hostile completions (fuzz/fuzz_targets/hostile_cqes.rs) with
# cargo fuzz / libFuzzer, on the stable toolchain (no sanitizer: `--sanitizer none`; ASan
# needs nightly).
#
#   scripts/fuzz.sh            # 60 s, as CI runs it
#   scripts/fuzz.sh 3600       # an hour
#   FUZZ_JOBS=2 scripts/fuzz.sh 600   # two processes in parallel
#
# The seed corpus in fuzz/corpus/hostile_cqes is only read; new inputs go to a scratch
# corpus (FUZZ_CORPUS, default target/fuzz-corpus). A crash leaves its input in
# fuzz/artifacts/hostile_cqes/ and fails the script; replay it with
#   cargo fuzz run hostile_cqes --sanitizer none fuzz/artifacts/hostile_cqes/<file>
# and keep it as a named regression test in crates/bufring/tests/hostile_completions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
jobs="${FUZZ_JOBS:-1}"
corpus="${FUZZ_CORPUS:-target/fuzz-corpus}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (crates.io)"
    cargo install cargo-fuzz --locked --quiet
fi
mkdir -p "$corpus"
echo "== fuzzing hostile_cqes for ${secs}s (${jobs} job(s))"
parallel=()
if [ "$jobs" -gt 1 ]; then
    # libFuzzer then writes each job's log to fuzz-<n>.log in the current directory.
    parallel=(-jobs="$jobs" -workers="$jobs")
fi
cargo fuzz run hostile_cqes --sanitizer none "$corpus" fuzz/corpus/hostile_cqes -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${parallel[@]}" 2>&1 | tail -n 25
echo "== fuzzing finished without a finding"
