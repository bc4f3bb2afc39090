#!/usr/bin/env bash
# Runs the library's tests (kernel tests, model-vs-kernel, property tests, hostile
# completions, unit tests, the driver's) and bufring-tokio's in-runtime tests (cancellation,
# runtime drop with receives armed, echo, datagrams, frames) under valgrind's memcheck; any
# memcheck error fails the script.
#
#   scripts/valgrind.sh                 # every test binary of the bufring crate but the
#                                       # load tests below, and tokio_cancel, tokio_local,
#                                       # tokio_datagram, tokio_frames
#   scripts/valgrind.sh prop_pool       # only the test targets named
#   PROPTEST_CASES=256 scripts/valgrind.sh prop_pool   # longer
#   VALGRIND_ALL=1 scripts/valgrind.sh  # the load tests too (slow; their wall-clock
#                                       # deadlines may expire under memcheck)
#
# Skipped unless VALGRIND_ALL=1: the test binaries integrity, recv_bundles,
# recv_incremental_modes, frame, driver_emfile (it measures CPU time), the driver's load tests
# (see the case below), and lifecycle's exhaustion_rearm_nothing_lost_*,
# recv_files' pipe_read_multishot_*, recv_legacy's *_stream and *_bundle_api*. They push megabytes through paced loops with wall-clock
# deadlines, which memcheck's 20-50x slowdown overruns (they time out; no memcheck error was
# seen in them). The same paths run under memcheck in the smaller kernel tests and in the
# property tests.
#
# Leaks are reported but are not errors (VALGRIND_LEAKS=1 makes definite leaks errors): a
# legacy pool dropped while the kernel may still hold its buffers keeps their memory mapped
# on purpose (Pool's Drop), which memcheck reports as definitely lost.
#
# io_uring under valgrind: valgrind 3.19 knows io_uring_setup/enter/register, and the rings
# and buffers are mmap'd memory it already treats as defined, so the kernel's writes into them
# need no annotations. What valgrind cannot see is the kernel writing into our buffers from
# its own context: memcheck checks our accesses to them, not the kernel's. Valgrind runs one
# thread at a time, so the case counts are lowered here.
#
# Miri and the sanitizers (ASan, TSan, MSan) need a nightly toolchain, which the project's
# machines do not have; valgrind and loom are what run on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }

# Fewer cases than a plain run: memcheck is 20-50x slower.
export PROPTEST_CASES="${PROPTEST_CASES:-24}"
export BUFRING_HOSTILE_CASES="${BUFRING_HOSTILE_CASES:-300}"

want=" $* "
# Test binaries of a package: "name path" lines.
test_binaries() {
    cargo test -p "$1" --all-features --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["target"]["name"], m["executable"])
'
}
mapfile -t targets < <(test_binaries bufring)
[ "${#targets[@]}" -gt 0 ] || { echo "no test binaries built"; exit 1; }
# bufring-tokio's tests of the in-runtime mode only (named tokio_<test>): there no thread
# blocks in io_uring_enter, which memcheck (3.19) does while holding its lock, so the driver
# thread of the other mode stalls every other thread (a 5 ms bound on its wait,
# `Builder::max_wait`, still left the cancellation tests running for more than 15 min).
while read -r name bin; do
    case "$name" in
        cancel | local | datagram | frames) targets+=("tokio_$name $bin") ;;
    esac
done < <(test_binaries bufring-tokio)

leak_errors=none
[ -n "${VALGRIND_LEAKS:-}" ] && leak_errors=definite

failed=0
ran=0
for t in "${targets[@]}"; do
    name="${t%% *}"
    bin="${t#* }"
    if [ -n "${*}" ]; then
        [[ "$want" == *" $name "* ]] || continue
    elif [ -z "${VALGRIND_ALL:-}" ]; then
        case "$name" in
            # driver_emfile measures the CPU time of a paused accept, which memcheck inflates.
            integrity | recv_bundles | recv_incremental_modes | frame | driver_emfile)
                echo "== valgrind memcheck: $name skipped (load test; VALGRIND_ALL=1 runs it)"
                continue
                ;;
        esac
    fi
    echo "== valgrind memcheck: $name"
    ran=$((ran + 1))
    filters=()
    if [ -z "${VALGRIND_ALL:-}" ]; then
        case "$name" in
            # 32768 buffers drained one CQE at a time: a minute under memcheck, and no memory
            # path that the smaller programs miss.
            prop_pool) filters=(--skip largest_pool_with_a_wrapping_tail) ;;
            # Paced exhaustion loops with a wall-clock deadline that memcheck overruns.
            lifecycle) filters=(--skip exhaustion_rearm_nothing_lost) ;;
            # 6 MiB through a pipe per test, with a 60 s deadline.
            recv_files) filters=(--skip pipe_read_multishot) ;;
            # Legacy-buffer streams with deadlines.
            recv_legacy) filters=(--skip _stream --skip _bundle_api) ;;
            # Loopback load (many clients, megabytes each) and wall-clock deadlines, and a peer
            # thread racing the driver's waits (memcheck keeps its lock while a thread blocks in
            # io_uring_enter); what stays covers the driver's memory paths: dropping it busy,
            # spills, stop/recv, release, resets, timers, the readiness fd, bad handles.
            driver) filters=(--skip echo_server_ --skip memory_follows --skip no_spill
                --skip slow_readers --skip tiny_pool --skip spill_cancels --skip chunk_dropped
                --skip connect_then --skip linked_sockets_hold) ;;
        esac
    fi
    # The in-runtime tests of these (the others use the driver thread); all of tokio_local.
    case "$name" in
        tokio_cancel | tokio_datagram | tokio_frames) filters+=(in_the_runtime) ;;
    esac
    if ! valgrind --tool=memcheck --error-exitcode=99 -q \
        --leak-check=full --errors-for-leak-kinds="$leak_errors" --show-possibly-lost=no \
        "$bin" --test-threads=1 -q "${filters[@]}"; then
        echo "!! memcheck errors or test failures in $name"
        failed=$((failed + 1))
    fi
done
echo "valgrind: $((ran - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
