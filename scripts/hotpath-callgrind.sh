#!/usr/bin/env bash
# Instructions per completion of each `bufring bench hotpath` contender, counted by callgrind.
# Each contender runs twice (N1 and N2 completions, one round); the difference of the two totals
# divided by N2 - N1 leaves out start-up and set-up, so only the per-completion loop remains.
# Usage: scripts/hotpath-callgrind.sh [path/to/bufring]   (default: target/release/bufring)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/bufring}
if ! command -v valgrind >/dev/null; then
    echo "valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
fi
# Without an argument, (re)build the binary with the bench (a no-op when it is up to date).
[ -n "${1:-}" ] || cargo build --release -p bufring-cli --features bench
n1=100000
n2=300000
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # contender completions -> instructions
    valgrind --tool=callgrind --callgrind-out-file="$tmp/out" "$bin" bench hotpath \
        --only "$1" --completions "$2" --rounds 1 --json >"$tmp/json" 2>"$tmp/log"
    if grep -q skipped "$tmp/json"; then echo skipped; return; fi
    grep -o 'Collected : [0-9]*' "$tmp/log" | awk '{print $3}'
}
printf '%-16s %s\n' contender instructions/completion
for c in liburing-c pool liburing-c-inc pool-inc; do
    a=$(count "$c" $n1)
    b=$(count "$c" $n2)
    if [ "$a" = skipped ] || [ "$b" = skipped ]; then
        printf '%-16s %s\n' "$c" "skipped (built without liburing)"
    else
        printf '%-16s %s\n' "$c" "$(( (b - a) / (n2 - n1) ))"
    fi
done
