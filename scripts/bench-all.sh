#!/usr/bin/env bash
# Runs every benchmark behind BENCHMARKS.md, writes the tables to $OUT (default
# target/bench-results) and the plots to docs/. Takes about five minutes on 2 cores.
# On a machine shared with other work, run it as root with a raised priority:
#   sudo nice -n -15 scripts/bench-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/bench-results}
mkdir -p "$out" docs
cargo build --release -p bufring-cli --features bench
bin=target/release/bufring
{ date -u; uname -r; nproc; uptime; } >"$out/machine.txt"
$bin bench stream --plot docs/bench-stream.png | tee "$out/stream.txt"
$bin bench stream --conns 1 --pool-mem 16M --plot docs/bench-stream-16M.png | tee "$out/stream-16M.txt"
$bin bench fanin --plot docs/bench-fanin.png | tee "$out/fanin.txt"
$bin bench hotpath --plot docs/bench-hotpath.png | tee "$out/hotpath.txt"
if command -v valgrind >/dev/null; then
    scripts/hotpath-callgrind.sh "$bin" | tee "$out/hotpath-callgrind.txt"
fi
uptime >>"$out/machine.txt"
