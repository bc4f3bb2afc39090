#!/usr/bin/env bash
# Proxy benchmark (outside CI), all on loopback in one run: wrk -> nginx (1 KiB and 64 KiB
# responses) and iperf2 streams (1 and 4), each measured directly, through `bufring proxy`,
# through the tokio copy_bidirectional baseline (`bufring proxy-tokio`) and through liburing's
# examples/proxy.c when it can be built; then each proxy's peak RSS under that load, its RSS
# holding 10,000 idle connections, and normal clients' throughput beside 800 slow readers.
#
#   scripts/proxy-bench.sh                    # about 15 minutes
#   DUR=3 ROUNDS=1 IDLE=2000 SLOW=200 scripts/proxy-bench.sh
#   PROXY_C=/path/to/proxy scripts/proxy-bench.sh   # a proxy.c built elsewhere
#
# The targets are measured in turn, ROUNDS times over, and the median of each is reported, so
# that load from other work on the machine spreads over all of them alike.
#
# proxy.c comes with liburing's source, not with its -dev package: the script downloads the
# source of the Debian package (liburing 2.9, from deb.debian.org's pool; bookworm's 2.3 has
# no proxy.c), builds it and links proxy.c against it. Without network or a compiler, the
# proxy.c rows are left out.
#
# Installs nginx, wrk and iperf (iperf2) from the distribution's packages if missing. Every
# load has a fixed duration; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-5}           # seconds per wrk / iperf run
ROUNDS=${ROUNDS:-3}     # measurements per target (median reported)
CONNS=${CONNS:-64}      # wrk connections
IDLE=${IDLE:-10000}     # idle connections for the RSS measurement (capped by the fd limit)
SLOW=${SLOW:-800}       # slow readers beside 40 normal clients
BASE=${BASE:-18000}     # ports BASE..BASE+60 on 127.0.0.1

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v iperf >/dev/null || need+=(iperf)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== building"
cargo build --release -q -p bufring-cli --features proxy-tokio
BIN=$PWD/target/release/bufring

# Two sockets per proxied connection. Without CAP_SYS_RESOURCE the hard limit stays.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
MAXIDLE=$(( ($(ulimit -n) - 64) / 2 ))
if [ "$IDLE" -gt "$MAXIDLE" ]; then
    echo "== open files limit $(ulimit -n): $MAXIDLE idle connections instead of $IDLE"
    IDLE=$MAXIDLE
fi

WORK=$(mktemp -d /tmp/proxy-bench.XXXXXX)
chmod 755 "$WORK"   # nginx's workers (www-data) read the file below
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "iperf -s -p ${IPERF:-none}" 2>/dev/null || true
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() { # port: wait up to 5 s for a listener
    for _ in $(seq 50); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; return 1
}

# ---- the servers ------------------------------------------------------------------------
NGINX=$BASE; IPERF=$((BASE + 1))
mkdir -p "$WORK/www" "$WORK/tmp"
head -c 1024 /dev/urandom >"$WORK/www/1k.bin"
head -c 65536 /dev/urandom >"$WORK/www/64k.bin"
head -c 4194304 /dev/urandom >"$WORK/www/4m.bin"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
    uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$NGINX; root $WORK/www; }
}
EOF
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err" & PIDS+=($!)
# iperf2's server has crashed when a client's connection was cut: restarted (at most 20 times).
(for _ in $(seq 20); do iperf -s -p "$IPERF" >/dev/null 2>&1 || true; done) & PIDS+=($!)
wait_port "$NGINX"; wait_port "$IPERF"

# ---- proxy.c ------------------------------------------------------------------------------
PROXYC=${PROXY_C:-}
if [ -z "$PROXYC" ]; then
    v=2.9
    if curl -fsS -m 60 -o "$WORK/liburing.tgz" \
        "http://deb.debian.org/debian/pool/main/libu/liburing/liburing_$v.orig.tar.gz" \
        && tar xzf "$WORK/liburing.tgz" -C "$WORK" \
        && (cd "$WORK/liburing-$v" && ./configure >/dev/null && make -s -C src -j2 >/dev/null 2>&1) \
        && gcc -O2 -D_GNU_SOURCE -I"$WORK/liburing-$v/src/include" -o "$WORK/proxy_c" \
            "$WORK/liburing-$v/examples/proxy.c" "$WORK/liburing-$v/examples/helpers.c" \
            "$WORK/liburing-$v/src/liburing.a" -lpthread; then
        PROXYC=$WORK/proxy_c
        echo "== proxy.c: built from liburing $v"
    else
        echo "== proxy.c: could not be built; its rows are left out"
    fi
fi

# ---- the proxies ------------------------------------------------------------------------
# name port command...: each proxy gets a port in front of nginx and one in front of iperf.
declare -A HTTP_PORT IPERF_PORT HTTP_PID IPERF_PID
start_proxy() {
    local name=$1 p=$2; shift 2
    "$@" --listen 127.0.0.1:$p --upstream 127.0.0.1:$NGINX 2>"$WORK/$name.http.err" & PIDS+=($!)
    HTTP_PID[$name]=$!
    "$@" --listen 127.0.0.1:$((p + 1)) --upstream 127.0.0.1:$IPERF 2>"$WORK/$name.iperf.err" & PIDS+=($!)
    IPERF_PID[$name]=$!
    wait_port "$p"; wait_port $((p + 1))
    HTTP_PORT[$name]=$p; IPERF_PORT[$name]=$((p + 1))
}
# proxy.c: a thread (and a ring) per connection, made when the connection comes: 1 stream runs
# on one thread, 4 streams on four, wrk's 64 connections on 64 (seen in a profile of 4 streams:
# four busy proxy_c threads). Multishot receives, DEFER_TASKRUN, fixed files; 1024 provided
# buffers of 64 KiB like bufring's default pool. Both directions (-B1) for HTTP; one (-B0) for iperf,
# which only sends (with -B1 its send-bundle mode aborts under iperf).
start_proxyc() {
    local name=$1 p=$2; shift 2
    "$PROXYC" -m1 -d1 -B1 -b65536 -n1024 "$@" -H 127.0.0.1 -r $p -p $NGINX >"$WORK/$name.http.err" 2>&1 & PIDS+=($!)
    HTTP_PID[$name]=$!
    "$PROXYC" -m1 -d1 -B0 -b65536 -n1024 "$@" -H 127.0.0.1 -r $((p + 1)) -p $IPERF >"$WORK/$name.iperf.err" 2>&1 & PIDS+=($!)
    IPERF_PID[$name]=$!
    wait_port "$p"; wait_port $((p + 1))
    HTTP_PORT[$name]=$p; IPERF_PORT[$name]=$((p + 1))
}
start_proxy bufring $((BASE + 10)) "$BIN" proxy
start_proxy bufring-classic $((BASE + 12)) "$BIN" proxy --incremental off
start_proxy bufring-256k $((BASE + 14)) "$BIN" proxy --max-unsent 262144
start_proxy tokio-64k $((BASE + 16)) "$BIN" proxy-tokio --buf-size 65536
start_proxy tokio-8k $((BASE + 18)) "$BIN" proxy-tokio --buf-size 8192
# One worker thread each: wrk, nginx and iperf compete for the same two cores. (proxy.c has
# one thread per connection: like for like with the -1t rows only on one iperf stream.)
start_proxy bufring-1t $((BASE + 20)) "$BIN" proxy --threads 1
start_proxy tokio-64k-1t $((BASE + 22)) "$BIN" proxy-tokio --buf-size 65536 --threads 1
TARGETS=(direct bufring bufring-classic bufring-256k tokio-64k tokio-8k bufring-1t tokio-64k-1t)
if [ -n "$PROXYC" ]; then
    start_proxyc proxy.c $((BASE + 24))
    # Receive bundles, and sends from provided buffers as bundles: its fastest bulk mode.
    start_proxyc proxy.c-bundles $((BASE + 26)) -c1 -u1 -C1
    TARGETS+=(proxy.c proxy.c-bundles)
fi
HTTP_PORT[direct]=$NGINX; IPERF_PORT[direct]=$IPERF

# ---- wrk ----------------------------------------------------------------------------------
declare -A RPS P50 P99 GB1 GB4
to_ms() { # wrk latency (e.g. 1.23ms, 456.00us, 1.01s) -> ms
    python3 -c "
import re,sys
v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v); x=float(m.group(1))
print('%.3f' % (x/1000 if m.group(2)=='us' else x*1000 if m.group(2)=='s' else x))" "$1"
}
median() { python3 -c "import sys,statistics; v=[float(x) for x in sys.argv[1:] if x]; print(('%.2f' % statistics.median(v)) if v else '')" "$@"; }
# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The whole machine's busy ticks (user, nice, system, irq, softirq, steal) and all ticks.
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
declare -A RPS_ALL P50_ALL P99_ALL CPU_ALL CPU ALL_ALL ALLCPU BUSY_ALL BUSY
for size in 1k 64k; do
echo "== wrk -t2 -c$CONNS -d${DUR}s, $size file, $ROUNDS round(s)"
for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        k=$t/$size
        pid=${HTTP_PID[$t]:-}
        [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
        read -r m0 t0 < <(machine_ticks)
        out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:${HTTP_PORT[$t]}/$size.bin")
        read -r m1 t1 < <(machine_ticks)
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        # Everything's CPU per request (wrk, nginx, the proxy, the kernel's loopback work), and
        # how busy the cores were: with them saturated, req/s = cores / this.
        all=$(python3 -c "print('%.1f' % (($m1 - $m0) * 1e6 / $(getconf CLK_TCK) / max(1, $n)))")
        busy=$(python3 -c "print('%.0f' % (100.0 * ($m1 - $m0) / max(1, $t1 - $t0)))")
        us=""
        if [ -n "$pid" ]; then
            # The proxy's CPU per request: steadier than req/s when other work shares the cores.
            c1=$(cpu_ticks "$pid")
            us=$(python3 -c "print('%.1f' % (($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / max(1, $n)))")
        fi
        if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
            echo "  $t: errors: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"
        fi
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
        RPS_ALL[$k]+=" $rps"; P50_ALL[$k]+=" $p50"; P99_ALL[$k]+=" $p99"; CPU_ALL[$k]+=" $us"
        ALL_ALL[$k]+=" $all"; BUSY_ALL[$k]+=" $busy"
        printf "  round %d %-20s %10s req/s  p50 %7s ms  p99 %7s ms  proxy CPU %6s us/request  all %6s us/request, cores %s%% busy\n" \
            "$r" "$t" "$rps" "$p50" "$p99" "${us:--}" "$all" "$busy"
    done
done
for t in "${TARGETS[@]}"; do
    k=$t/$size
    RPS[$k]=$(median ${RPS_ALL[$k]}); P50[$k]=$(median ${P50_ALL[$k]}); P99[$k]=$(median ${P99_ALL[$k]})
    CPU[$k]=$(median ${CPU_ALL[$k]:-}); ALLCPU[$k]=$(median ${ALL_ALL[$k]}); BUSY[$k]=$(median ${BUSY_ALL[$k]})
done
done
# Peak RSS of each proxy over all the wrk runs (steady load: 64 connections at full speed).
declare -A HWM
for t in "${TARGETS[@]}"; do
    pid=${HTTP_PID[$t]:-}
    [ -n "$pid" ] && HWM[$t]=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
done

# ---- iperf --------------------------------------------------------------------------------
gbits() { # iperf -c output -> Gbit/s of the (sum) line
    python3 -c "
import re,sys
lines=[l for l in sys.stdin.read().splitlines() if 'bits/sec' in l]
pick=[l for l in lines if 'SUM' in l] or lines
if not pick:
    print(''); sys.exit()
m=re.search(r'([0-9.]+) ([GMK])bits/sec', pick[-1])
if not m:
    print(''); sys.exit()
v=float(m.group(1)); print('%.2f' % (v if m.group(2)=='G' else v/1000 if m.group(2)=='M' else v/1e6))"
}
declare -A GB1_ALL GB4_ALL
echo "== iperf2, ${DUR}s, 1 and 4 streams, $ROUNDS round(s)"
for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        g1=$(iperf -c 127.0.0.1 -p "${IPERF_PORT[$t]}" -t "$DUR" -P 1 2>&1 | gbits)
        g4=$(iperf -c 127.0.0.1 -p "${IPERF_PORT[$t]}" -t "$DUR" -P 4 2>&1 | gbits)
        GB1_ALL[$t]+=" $g1"; GB4_ALL[$t]+=" $g4"
        printf "  round %d %-16s 1 stream %6s Gbit/s   4 streams %6s Gbit/s\n" "$r" "$t" "$g1" "$g4"
    done
done
for t in "${TARGETS[@]}"; do
    GB1[$t]=$(median ${GB1_ALL[$t]}); GB4[$t]=$(median ${GB4_ALL[$t]})
done
# bufring's receive completions and io_uring_enter calls per GB over all its iperf traffic
# (its statistics on SIGUSR1).
declare -A PERGB
for t in "${TARGETS[@]}"; do
    case $t in bufring*) ;; *) continue ;; esac
    pid=${IPERF_PID[$t]}
    kill -USR1 "$pid" 2>/dev/null || continue
    sleep 0.5
    PERGB[$t]=$(grep '^total: ' "$WORK/$t.iperf.err" | tail -1 | python3 -c "
import re,sys
l=sys.stdin.read()
up=int(re.search(r'client->upstream (\d+)',l).group(1)); down=int(re.search(r'upstream->client (\d+)',l).group(1))
recv=int(re.search(r'; (\d+) receive completions',l).group(1)); enters=int(re.search(r'(\d+) enters',l).group(1))
gb=max(1,up+down)/1e9
print('%d receive completions/GB, %d io_uring_enter calls/GB' % (recv/gb, enters/gb))")
    echo "  $t: ${PERGB[$t]}"
done


# ---- RSS with idle connections -------------------------------------------------------------
# One Python process is both the clients and the upstream: it opens IDLE connections through
# the proxy, waits until the proxy has connected each upstream, then the proxy's RSS is read.
cat >"$WORK/idle.py" <<'EOF'
import os, socket, sys, time, selectors
proxy_port, up_port, n, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss(p):
    for l in open(f"/proc/{p}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
up = socket.socket(); up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
up.bind(("127.0.0.1", up_port)); up.listen(4096); up.setblocking(False)
before = rss(pid)
clients, accepted = [], []
deadline = time.time() + 60
while (len(clients) < n or len(accepted) < n) and time.time() < deadline:
    # A few connects in flight at a time: a listen backlog that overflows drops SYNs, and
    # their retransmission takes seconds.
    if len(clients) < n and len(clients) - len(accepted) < 100:
        c = socket.socket(); c.setblocking(False)
        c.connect_ex(("127.0.0.1", proxy_port)); clients.append(c)
    else:
        time.sleep(0.001)
    try:
        while True:
            a, _ = up.accept(); accepted.append(a)
    except BlockingIOError:
        pass
time.sleep(1.0)
after = rss(pid)
print(f"{len(accepted)} {before} {after}")
for s in clients + accepted: s.close()
EOF
echo "== RSS with $IDLE idle connections (kB: before, with the connections; per connection)"
declare -A RSS
UP=$((BASE + 30)); PP=$((BASE + 31))
for t in bufring bufring-classic tokio-8k tokio-64k; do
    case $t in
        bufring) cmd=("$BIN" proxy) ;;
        bufring-classic) cmd=("$BIN" proxy --incremental off) ;;
        tokio-8k) cmd=("$BIN" proxy-tokio --buf-size 8192) ;;
        tokio-64k) cmd=("$BIN" proxy-tokio --buf-size 65536) ;;
    esac
    "${cmd[@]}" --listen 127.0.0.1:$PP --upstream 127.0.0.1:$UP 2>"$WORK/$t.idle.err" & pid=$!; PIDS+=($pid)
    wait_port $PP
    read -r got before after < <(python3 "$WORK/idle.py" $PP $UP "$IDLE" $pid)
    kill $pid; wait $pid 2>/dev/null || true
    RSS[$t]=$after
    printf "  %-16s %6s connected   RSS %7s -> %7s kB   %6.2f kB/connection\n" "$t" "$got" "$before" "$after" \
        "$(python3 -c "print(($after-$before)/max(1,$got))")"
    UP=$((UP + 2)); PP=$((PP + 2))
done

# ---- slow readers --------------------------------------------------------------------------
# SLOW clients each ask nginx for 4 MiB through the proxy and read nothing (a 4 KiB receive
# buffer); meanwhile wrk's 40 normal clients fetch the 1 KiB file. Their rate is compared with
# their rate through the same proxy without the slow readers.
cat >"$WORK/slow.py" <<'EOF'
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /4m.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
print("ready", flush=True)
time.sleep(hold)
for s in socks: s.close()
EOF
declare -A SLOW_BASE SLOW_WITH
echo "== $SLOW slow readers beside wrk -t2 -c40 -d${DUR}s (1 KiB)"
for t in bufring bufring-1t tokio-64k tokio-64k-1t; do
    port=${HTTP_PORT[$t]}
    SLOW_BASE[$t]=$(wrk -t2 -c40 -d"${DUR}s" "http://127.0.0.1:$port/1k.bin" | awk '/Requests\/sec/ {print $2}')
    coproc SLOWPY { python3 "$WORK/slow.py" "$port" "$SLOW" $((DUR + 5)); }
    read -r _ <&"${SLOWPY[0]}"
    sleep 1
    SLOW_WITH[$t]=$(wrk -t2 -c40 -d"${DUR}s" "http://127.0.0.1:$port/1k.bin" | awk '/Requests\/sec/ {print $2}')
    rss=$(awk '/VmRSS/ {print $2}' "/proc/${HTTP_PID[$t]}/status")
    wait "$SLOWPY_PID" 2>/dev/null || true
    printf "  %-16s without %10s req/s   with %10s req/s   (%s)   proxy RSS with them %7s kB\n" "$t" \
        "${SLOW_BASE[$t]}" "${SLOW_WITH[$t]}" "$(python3 -c "print('%.2f x' % (float('${SLOW_WITH[$t]}' or 0)/max(1e-9,float('${SLOW_BASE[$t]}' or 0))))")" "$rss"
done

# ---- summary ----------------------------------------------------------------------------
ratio() { python3 -c "a,b=float('$1' or 0),float('$2' or 0); print('%.2f' % (a/b) if a and b else 'n/a')"; }
echo
echo "== summary: medians of $ROUNDS round(s); x tokio: against tokio-64k (tokio-64k-1t for the -1t rows)"
printf "  %-20s %9s %7s %7s %8s %7s %9s %7s %7s %8s %7s %8s %8s %9s\n" target "1k req/s" p50ms p99ms "x tokio" "us/req" \
    "64k req/s" p50ms p99ms "x tokio" "us/req" "1s Gb/s" "4s Gb/s" "peak RSS"
for t in "${TARGETS[@]}"; do
    base=tokio-64k; [[ $t == *-1t ]] && base=tokio-64k-1t
    printf "  %-20s %9s %7s %7s %8s %7s %9s %7s %7s %8s %7s %8s %8s %9s\n" "$t" \
        "${RPS[$t/1k]}" "${P50[$t/1k]}" "${P99[$t/1k]}" "$(ratio "${RPS[$t/1k]}" "${RPS[$base/1k]}")" "${CPU[$t/1k]:--}" \
        "${RPS[$t/64k]}" "${P50[$t/64k]}" "${P99[$t/64k]}" "$(ratio "${RPS[$t/64k]}" "${RPS[$base/64k]}")" "${CPU[$t/64k]:--}" \
        "${GB1[$t]}" "${GB4[$t]}" "${HWM[$t]:--}"
done
# The CPU budget: with the cores saturated, req/s follows everything's CPU per request. What is
# not the proxy's (wrk, nginx, their share of the loopback work) is paid whichever proxy runs, so
# a ratio R against tokio needs the proxy's CPU per request at (rest + tokio's) / R - rest.
for size in 1k 64k; do
    for pair in "bufring tokio-64k" "bufring-1t tokio-64k-1t"; do
        read -r b tk <<<"$pair"
        python3 -c "
b_all, b_us, t_all, t_us = (float(x or 0) for x in ('${ALLCPU[$b/$size]}', '${CPU[$b/$size]}', '${ALLCPU[$tk/$size]}', '${CPU[$tk/$size]}'))
if not (b_all and b_us and t_all and t_us): raise SystemExit
rest = (b_all - b_us + t_all - t_us) / 2
need = (rest + t_us) / 1.2 - rest
print('  CPU budget, $size, $b: everything %.1f us/req against %.1f (cores %.0f%% / %.0f%% busy); the rest (not the proxy) %.1f; proxy %.1f against %.1f (%.2f x); 1.2 x req/s would need the proxy at %.1f us (%.2f x tokio)' % (b_all, t_all, float('${BUSY[$b/$size]}' or 0), float('${BUSY[$tk/$size]}' or 0), rest, b_us, t_us, b_us / t_us, need, need / t_us))"
    done
done
if [ -n "$PROXYC" ]; then
    best1=$(python3 -c "print(max(float('${GB1[proxy.c]}' or 0), float('${GB1[proxy.c-bundles]}' or 0)))")
    best4=$(python3 -c "print(max(float('${GB4[proxy.c]}' or 0), float('${GB4[proxy.c-bundles]}' or 0)))")
    echo "  iperf against proxy.c's best mode (a thread per connection): bufring (defaults, a thread per core) $(ratio "${GB1[bufring]}" "$best1") x (1 stream), $(ratio "${GB4[bufring]}" "$best4") x (4 streams); one thread each (1 stream): bufring-1t $(ratio "${GB1[bufring-1t]}" "$best1") x; bufring-1t on 4 streams against proxy.c's 4 threads $(ratio "${GB4[bufring-1t]}" "$best4") x"
fi
echo "  peak RSS under load: bufring ${HWM[bufring]} kB against tokio-64k ${HWM[tokio-64k]} kB (target <= 1.5 x + 4096 = $(python3 -c "print(int(1.5*${HWM[tokio-64k]:-0}+4096))") kB)"
echo "  RSS with $IDLE idle connections: bufring ${RSS[bufring]} kB, bufring-classic ${RSS[bufring-classic]} kB, tokio-8k ${RSS[tokio-8k]} kB, tokio-64k ${RSS[tokio-64k]} kB"
echo "  kernel $(uname -r), $(nproc) cores, load before the run: $LOAD0"
