#!/usr/bin/env bash
# Proxy benchmark (outside CI): wrk -> nginx and iperf2 streams, each measured directly, through
# `bufring proxy` and through the tokio copy_bidirectional baseline (`bufring proxy-tokio`),
# all on loopback in one run. Then the RSS of each proxy holding 10,000 idle connections.
#
#   scripts/proxy-bench.sh                    # about 8 minutes
#   DUR=3 ROUNDS=1 IDLE=2000 scripts/proxy-bench.sh
#
# The targets are measured in turn, ROUNDS times over, and the median of each is reported, so
# that load from other work on the machine spreads over all of them alike.
#
# Installs nginx, wrk and iperf (iperf2) from the distribution's packages if missing. Every
# load has a fixed duration; everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-5}           # seconds per wrk / iperf run
ROUNDS=${ROUNDS:-3}     # measurements per target (median reported)
CONNS=${CONNS:-64}      # wrk connections
IDLE=${IDLE:-10000}     # idle connections for the RSS measurement (capped by the fd limit)
BASE=${BASE:-18000}     # ports BASE..BASE+40 on 127.0.0.1

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v iperf >/dev/null || need+=(iperf)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

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
iperf -s -p "$IPERF" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$NGINX"; wait_port "$IPERF"

# ---- the proxies ------------------------------------------------------------------------
# name port command...: each proxy gets a port in front of nginx and one in front of iperf.
declare -A HTTP_PORT IPERF_PORT HTTP_PID
start_proxy() {
    local name=$1 p=$2; shift 2
    "$@" --listen 127.0.0.1:$p --upstream 127.0.0.1:$NGINX 2>"$WORK/$name.http.err" & PIDS+=($!)
    HTTP_PID[$name]=$!
    "$@" --listen 127.0.0.1:$((p + 1)) --upstream 127.0.0.1:$IPERF 2>"$WORK/$name.iperf.err" & PIDS+=($!)
    wait_port "$p"; wait_port $((p + 1))
    HTTP_PORT[$name]=$p; IPERF_PORT[$name]=$((p + 1))
}
start_proxy bufring-inc $((BASE + 10)) "$BIN" proxy --incremental on
start_proxy bufring-classic $((BASE + 12)) "$BIN" proxy --incremental off
start_proxy tokio-64k $((BASE + 14)) "$BIN" proxy-tokio --buf-size 65536
start_proxy tokio-8k $((BASE + 16)) "$BIN" proxy-tokio --buf-size 8192
# One worker thread each: wrk, nginx and iperf compete for the same two cores.
start_proxy bufring-inc-1t $((BASE + 18)) "$BIN" proxy --incremental on --threads 1
start_proxy tokio-64k-1t $((BASE + 20)) "$BIN" proxy-tokio --buf-size 65536 --threads 1
HTTP_PORT[direct]=$NGINX; IPERF_PORT[direct]=$IPERF
TARGETS=(direct bufring-inc bufring-classic tokio-64k tokio-8k bufring-inc-1t tokio-64k-1t)

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
declare -A RPS_ALL P50_ALL P99_ALL CPU_ALL CPU
echo "== wrk -t2 -c$CONNS -d${DUR}s, 1 KiB file, $ROUNDS round(s)"
for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        pid=${HTTP_PID[$t]:-}
        [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
        out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:${HTTP_PORT[$t]}/1k.bin")
        us=""
        if [ -n "$pid" ]; then
            # The proxy's CPU per request: steadier than req/s when other work shares the cores.
            c1=$(cpu_ticks "$pid"); n=$(awk '/requests in/ {print $1}' <<<"$out")
            us=$(python3 -c "print('%.1f' % (($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / max(1, $n)))")
        fi
        if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
            echo "  $t: errors: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"
        fi
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
        p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
        RPS_ALL[$t]+=" $rps"; P50_ALL[$t]+=" $p50"; P99_ALL[$t]+=" $p99"; CPU_ALL[$t]+=" $us"
        printf "  round %d %-16s %10s req/s  p50 %7s ms  p99 %7s ms  proxy CPU %6s us/request\n" \
            "$r" "$t" "$rps" "$p50" "$p99" "${us:--}"
    done
done
for t in "${TARGETS[@]}"; do
    RPS[$t]=$(median ${RPS_ALL[$t]}); P50[$t]=$(median ${P50_ALL[$t]}); P99[$t]=$(median ${P99_ALL[$t]})
    CPU[$t]=$(median ${CPU_ALL[$t]:-})
done

# ---- iperf --------------------------------------------------------------------------------
gbits() { # iperf -c output -> Gbit/s of the (sum) line
    python3 -c "
import re,sys
lines=[l for l in sys.stdin.read().splitlines() if 'bits/sec' in l]
pick=[l for l in lines if 'SUM' in l] or lines
m=re.search(r'([0-9.]+) ([GMK])bits/sec', pick[-1])
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
for t in bufring-inc bufring-classic tokio-8k tokio-64k; do
    case $t in
        bufring-inc) cmd=("$BIN" proxy --incremental on) ;;
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

# ---- summary ----------------------------------------------------------------------------
ratio() { python3 -c "a,b=float('$1' or 0),float('$2' or 0); print('%.2f' % (a/b) if a and b else 'n/a')"; }
echo
echo "== summary: medians of $ROUNDS round(s); ratios to direct and to tokio-64k (tokio-64k-1t for the -1t rows)"
printf "  %-16s %10s %7s %7s %8s %8s %8s %9s %9s %9s %9s %9s %9s\n" target req/s p50ms p99ms "x tokio" "us/req" "x tokio" "1s Gb/s" "x direct" "x tokio" "4s Gb/s" "x direct" "x tokio"
for t in "${TARGETS[@]}"; do
    base=tokio-64k; [[ $t == *-1t ]] && base=tokio-64k-1t
    printf "  %-16s %10s %7s %7s %8s %8s %8s %9s %9s %9s %9s %9s %9s\n" "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" \
        "$(ratio "${RPS[$t]}" "${RPS[$base]}")" "${CPU[$t]:--}" "$(ratio "${CPU[$t]:-}" "${CPU[$base]}")" \
        "${GB1[$t]}" "$(ratio "${GB1[$t]}" "${GB1[direct]}")" \
        "$(ratio "${GB1[$t]}" "${GB1[$base]}")" "${GB4[$t]}" "$(ratio "${GB4[$t]}" "${GB4[direct]}")" \
        "$(ratio "${GB4[$t]}" "${GB4[$base]}")"
done
echo "  RSS with $IDLE idle connections: bufring-inc ${RSS[bufring-inc]} kB, bufring-classic ${RSS[bufring-classic]} kB, tokio-8k ${RSS[tokio-8k]} kB, tokio-64k ${RSS[tokio-64k]} kB"
echo "  kernel $(uname -r), $(nproc) cores"
