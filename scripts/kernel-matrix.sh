#!/usr/bin/env bash
# The kernel matrix: bufring's kernel tests, `bufring probe --json` and the demo in every mode,
# on real Debian kernels (6.1 and 6.12 LTS) booted under QEMU, next to the host's kernel.
#
#   scripts/kernel-matrix.sh            everything (CI runs this)
#   KMATRIX_HOST=0 ...                  without the host column
#   KMATRIX_ONLY="driver tokio_echo" ... only these test binaries
#   KMATRIX_KERNELS="pkg ..." ...       other kernel packages than the pinned ones; SUITE:pkg
#                                       for another Debian suite, e.g. Debian 11's 5.10 (no
#                                       buffer rings, not in CI: docs/kernels.md):
#                                       bullseye:linux-image-5.10.0-46-cloud-amd64
#   ACCEL=kvm|tcg ...                   force an accelerator (default: kvm if it boots a stock
#                                       kernel here, else tcg)
#
# Steps: install qemu-system-x86 if missing (Debian, as root); download the pinned kernel
# packages into target/kmatrix-cache (outside git) and take vmlinuz out of them without
# installing anything; build the tests and the CLI as static binaries (glibc, crt-static, in
# target/kmatrix so the normal build stays valid) and /init from scripts/kmatrix/init.c;
# write one initramfs per kernel (scripts/kmatrix/mkinitramfs.py, no cpio needed) with a plan
# from scripts/kmatrix/matrix.py; boot each kernel with its serial console in a log; print the
# table. Exit status 1 if any test, probe check or demo failed. Every step has a time bound.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned kernels: Debian 12 (bookworm) packages. The mirrors keep only recent ABI numbers: when
# a pin disappears the script takes the newest package of the same series and says so;
# update the pin then.
PINNED_KERNELS=(
    "linux-image-6.1.0-57-cloud-amd64"
    "linux-image-6.12.117+deb12-cloud-amd64"
)
read -r -a KERNELS <<<"${KMATRIX_KERNELS:-${PINNED_KERNELS[*]}}"
# Test binaries that exercise no kernel (the kernel model and the hostile-completion corpus,
# which also reads its corpus from the source tree): `cargo test` runs them on the host.
HOST_ONLY="prop_pool hostile_completions"

TARGET=target/kmatrix
CACHE=${KMATRIX_CACHE:-target/kmatrix-cache}
WORK=$TARGET/run
TRIPLE=x86_64-unknown-linux-gnu
VM_TIMEOUT=${KMATRIX_VM_TIMEOUT:-600}
NICE="nice -n 10"
export CARGO_TERM_COLOR=never DEBIAN_FRONTEND=noninteractive
T0=$(date +%s)
say() { echo "== kernel-matrix [$(($(date +%s) - T0))s] $*"; }
die() { echo "kernel-matrix: $*" >&2; exit 2; }

mkdir -p "$CACHE" "$WORK"
rm -rf "${WORK:?}"/*

# --- tools -------------------------------------------------------------------------------
apt_updated=0
apt_update() {
    [ "$apt_updated" = 1 ] && return 0
    apt_updated=1
    timeout 300 apt-get update -qq >/dev/null 2>&1 || echo "warning: apt-get update failed" >&2
}
apt_install() {
    [ "$(id -u)" = 0 ] || die "need $* (Debian packages) and not root to install them"
    timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt_update; timeout 600 apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
command -v qemu-system-x86_64 >/dev/null || { say "installing qemu-system-x86"; apt_install qemu-system-x86; }
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || { say "installing libc6-dev (static glibc)"; apt_install libc6-dev; }
for t in gcc python3 dpkg-deb apt-get cargo; do
    command -v $t >/dev/null || die "$t is missing"
done

# --- kernels -----------------------------------------------------------------------------
# A kernel is "PACKAGE" (from the host's apt sources: Debian 12 here) or "SUITE:PACKAGE" (another
# Debian suite, e.g. bullseye:linux-image-5.10.0-46-cloud-amd64, read through a private source
# list under the cache so the host's apt configuration is not touched).
CACHE_ABS=$(cd "$CACHE" && pwd)
# apt_opts SUITE: the apt-get/apt-cache options for that suite ("" for the host's sources).
apt_opts() {
    [ -z "$1" ] && return 0
    local a=$CACHE_ABS/apt-$1 key=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ ! -f "$a/sources.list" ]; then
        mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
        printf 'deb [signed-by=%s] http://deb.debian.org/debian %s main\n' "$key" "$1" >"$a/sources.list"
        printf 'deb [signed-by=%s] http://deb.debian.org/debian-security %s-security main\n' "$key" "$1" >>"$a/sources.list"
    fi
    echo "-o Dir::Etc::SourceList=$a/sources.list -o Dir::Etc::SourceParts=/nonexistent" \
        "-o Dir::State::Lists=$a/lists -o Dir::Cache=$a/cache -o Dir::State::status=/var/lib/dpkg/status"
}
declare -A suite_updated=()
suite_update() {
    if [ -z "$1" ]; then apt_update; return 0; fi
    [ -n "${suite_updated[$1]:-}" ] && return 0
    suite_updated[$1]=1
    # shellcheck disable=SC2046
    timeout 300 apt-get $(apt_opts "$1") update -qq >/dev/null 2>&1 || echo "warning: apt-get update ($1) failed" >&2
}
# fetch_kernel SUITE PACKAGE: prints its vmlinuz, downloading and unpacking it into the cache
# if needed (only vmlinuz and the config are kept, never installed).
fetch_kernel() {
    local suite=$1 pkg=$2 dir deb
    dir=$CACHE/x/$pkg
    if ! ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
        rm -f "$CACHE"/"$pkg"_*.deb
        # shellcheck disable=SC2046
        if ! (cd "$CACHE" && timeout 300 apt-get $(apt_opts "$suite") download -qq "$pkg" >/dev/null 2>&1); then
            suite_update "$suite"
            # shellcheck disable=SC2046
            (cd "$CACHE" && timeout 300 apt-get $(apt_opts "$suite") download -qq "$pkg" >/dev/null 2>&1) || return 1
        fi
        deb=$(ls "$CACHE"/"$pkg"_*.deb | head -1)
        mkdir -p "$dir"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards './boot/vmlinuz-*' './boot/config-*'
        rm -f "$deb"
    fi
    ls "$dir"/boot/vmlinuz-* | head -1
}
# newest_like SUITE PACKAGE: the newest package of the same series, if the pin is gone.
newest_like() {
    local re
    case $2 in
        linux-image-5.10.0-*-cloud-amd64) re='^linux-image-5\.10\.0-[0-9]+-cloud-amd64$' ;;
        linux-image-6.1.0-*-cloud-amd64) re='^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' ;;
        linux-image-6.12.*+deb12-cloud-amd64) re='^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$' ;;
        *) return 1 ;;
    esac
    suite_update "$1"
    # shellcheck disable=SC2046
    apt-cache $(apt_opts "$1") search --names-only 'linux-image-.*cloud-amd64' | awk '{print $1}' \
        | grep -E "$re" | sort -V | tail -1
}
say "kernels: ${KERNELS[*]}"
VMLINUZ=() RELEASES=()
for spec in "${KERNELS[@]}"; do
    suite='' pkg=$spec
    case $spec in *:*) suite=${spec%%:*} pkg=${spec#*:} ;; esac
    if ! vz=$(fetch_kernel "$suite" "$pkg"); then
        alt=$(newest_like "$suite" "$pkg" || true)
        [ -n "$alt" ] || die "kernel package $spec cannot be downloaded and has no newer sibling"
        echo "WARNING: pinned kernel $pkg is gone from the mirror; using $alt (update the pin in $0)"
        pkg=$alt
        vz=$(fetch_kernel "$suite" "$pkg") || die "cannot download $pkg"
    fi
    VMLINUZ+=("$vz")
    RELEASES+=("${pkg#linux-image-}")
done

# --- /init and the accelerator -------------------------------------------------------------
gcc -static -O2 -Wall -Wextra -Werror -o "$WORK/init" scripts/kmatrix/init.c
mkdir -p "$WORK/empty"
printf '# the accelerator check: boot and power off\n' >"$WORK/empty/plan"
python3 scripts/kmatrix/mkinitramfs.py "$WORK/empty.cpio" /init="$WORK/init" /kmatrix/plan="$WORK/empty/plan"

# qemu_boot ACCEL VMLINUZ INITRD LOG TIMEOUT
qemu_boot() {
    local cpu=max
    [ "$1" = kvm ] && cpu=host
    timeout --kill-after=10 "$5" $NICE qemu-system-x86_64 -accel "$1" -cpu $cpu -m 2048 -smp 2 \
        -nodefaults -display none -no-reboot -nic none -serial "file:$4" \
        -kernel "$2" -initrd "$3" -append "console=ttyS0 panic=-1 quiet" </dev/null >>"$4.qemu" 2>&1
}
if [ -z "${ACCEL:-}" ]; then
    ACCEL=tcg
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        # A stock kernel boots under working KVM in about a second; nested paravirtual
        # hypervisors that cannot run it hang instead. Checked while the build runs.
        (qemu_boot kvm "${VMLINUZ[0]}" "$WORK/empty.cpio" "$WORK/kvm-check.log" 20 || true) &
        KVM_CHECK=$!
    fi
fi

# --- static binaries -----------------------------------------------------------------------
# executables JSON-LINES KIND: "name path" of each executable cargo reported of that kind.
executables() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and sys.argv[2] in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])
' "$1" "$2"
}
static_cargo() {
    RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$TARGET \
        timeout 1800 $NICE cargo "$@" --target $TRIPLE --message-format=json-render-diagnostics
}
say "building static test binaries and the CLI (target $TRIPLE, crt-static, $TARGET)"
# `model`: the tests that use the pool's test hooks need it (crates/bufring/Cargo.toml).
static_cargo test --no-run -p bufring --tests --features model >"$WORK/tests.json"
# The tokio integration's tests, staged as tokio_<name> (its `echo` would meet the example's).
static_cargo test --no-run -p bufring-tokio --tests >"$WORK/tokio-tests.json"
static_cargo build -p bufring-cli --bin bufring >"$WORK/cli.json"
# The proxy's tests (the CLI's unit tests), staged as proxy_unit.
static_cargo test --no-run -p bufring-cli --bin bufring >"$WORK/cli-tests.json"
EXAMPLES=()
if [ -d crates/bufring/examples ]; then
    static_cargo build -p bufring --examples >"$WORK/examples.json"
fi
mkdir -p "$WORK/stage"
TESTS=()
while read -r name path; do
    case " $HOST_ONLY " in *" $name "*) continue ;; esac
    cp "$path" "$WORK/stage/$name"
    TESTS+=("$name")
done < <(executables "$WORK/tests.json" test | sort)
while read -r name path; do
    cp "$path" "$WORK/stage/tokio_$name"
    TESTS+=("tokio_$name")
done < <(executables "$WORK/tokio-tests.json" test | sort)
while read -r _ path; do
    cp "$path" "$WORK/stage/proxy_unit"
    TESTS+=("proxy_unit")
done < <(executables "$WORK/cli-tests.json" bin)
read -r _ cli < <(executables "$WORK/cli.json" bin)
cp "$cli" "$WORK/stage/bufring"
if [ -f "$WORK/examples.json" ]; then
    while read -r name path; do
        cp "$path" "$WORK/stage/$name"
        EXAMPLES+=("$name")
    done < <(executables "$WORK/examples.json" example | sort)
fi
for f in "$WORK"/stage/*; do
    # A static (or static-pie) executable has no program interpreter.
    if readelf -l "$f" | grep -q 'program interpreter'; then die "$f is not statically linked"; fi
done
if [ -n "${KMATRIX_ONLY:-}" ]; then
    # Only these test binaries (names as above), for a quick look at one test on the kernels.
    keep=()
    for t in "${TESTS[@]}"; do
        case " $KMATRIX_ONLY " in *" $t "*) keep+=("$t") ;; esac
    done
    TESTS=("${keep[@]}")
fi
say "in each guest: ${TESTS[*]} probe demo(classic emulated incremental bundle) ${EXAMPLES[*]:-}"

if [ -n "${KVM_CHECK:-}" ]; then
    wait "$KVM_CHECK" || true
    if grep -q "KMATRIX DONE" "$WORK/kvm-check.log" 2>/dev/null; then ACCEL=kvm; fi
fi
say "accelerator: $ACCEL"

# --- the runs ------------------------------------------------------------------------------
REPORT=()
for i in "${!KERNELS[@]}"; do
    rel=${RELEASES[$i]}
    d=$WORK/$rel
    mkdir -p "$d"
    KMATRIX_EMULATED=$([ "$ACCEL" = tcg ] && echo 1 || echo 0) \
        KMATRIX_STAGE=$WORK/stage python3 scripts/kmatrix/matrix.py plan "$rel" "$d/meta.json" \
        "${TESTS[@]}" -- "${EXAMPLES[@]}" >"$d/plan"
    files=(/init="$WORK/init" /kmatrix/plan="$d/plan" /kmatrix/bufring="$WORK/stage/bufring")
    for t in "${TESTS[@]}" "${EXAMPLES[@]}"; do files+=("/kmatrix/$t=$WORK/stage/$t"); done
    python3 scripts/kmatrix/mkinitramfs.py "$d/initrd" "${files[@]}"
    say "booting $rel ($ACCEL)"
    s=$(date +%s)
    for attempt in 1 2; do
        qemu_boot "$ACCEL" "${VMLINUZ[$i]}" "$d/initrd" "$d/console.log" "$VM_TIMEOUT" \
            || echo "qemu exited with $? (see $d/console.log and $d/console.log.qemu)"
        # A guest kernel that died while booting ran nothing (seen once: 6.12 under TCG, an
        # int3 oops in sched_clock_cpu 5 s into the boot): boot it once more.
        if grep -q 'KMATRIX BEGIN' "$d/console.log" || [ "$attempt" = 2 ]; then break; fi
        mv "$d/console.log" "$d/console.log.failed-boot"
        say "$rel: the guest ran nothing (its kernel died while booting?); booting it again"
    done
    say "$rel: $(($(date +%s) - s)) s"
    rm -f "$d/initrd"
    REPORT+=("$rel=$d/meta.json:$d/console.log")
done
if [ "${KMATRIX_HOST:-1}" = 1 ]; then
    rel=$(uname -r)
    d=$WORK/host
    mkdir -p "$d"
    python3 scripts/kmatrix/matrix.py plan "$rel" "$d/meta.json" "${TESTS[@]}" -- "${EXAMPLES[@]}" >"$d/plan"
    say "running the same plan on this machine ($rel)"
    s=$(date +%s)
    timeout "$VM_TIMEOUT" $NICE python3 scripts/kmatrix/matrix.py run-host "$d/plan" "$WORK/stage" \
        >"$d/console.log" 2>&1 || echo "host run exited with $?"
    say "host: $(($(date +%s) - s)) s"
    REPORT+=("host $rel=$d/meta.json:$d/console.log")
fi

say "results (logs in $WORK/*/console.log)"
set +e
python3 scripts/kmatrix/matrix.py report "$WORK/matrix.md" "${REPORT[@]}"
rc=$?
say "done in $(($(date +%s) - T0)) s"
exit $rc
