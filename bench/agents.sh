#!/usr/bin/env bash
# Agent benchmark: what one no-op external agent costs on the request path.
# One sentinel proxy, three routes side by side in one process and one run —
# no agent, a no-op agent over a Unix socket, the same agent over loopback
# TCP gRPC (two `sentinel-agent allow` processes) — each measured
#   (a) at saturation (wrk, keep-alive): throughput;
#   (b) at a fixed offered rate (wrk with a per-connection delay): p99.
# Ratios and added latency are against the route without an agent,
# measured in the same run. Goal: < 150 µs p99 added over the Unix socket.
#
#   bench/agents.sh
#   DURATION=10 CONNECTIONS=50 ROUNDS=3 bench/agents.sh
#
# Every server listens on 127.0.0.1 or a socket in a temp dir. Nothing here
# is a test: the figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-1}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-20}
RATE_DELAY_MS=${RATE_DELAY_MS:-10}   # 20 connections x one request per ~10 ms ≈ 2,000 req/s
ROUNDS=${ROUNDS:-2}                  # routes alternate; medians reported

scripts/ensure-deps wrk=wrk python3=python3

echo "==> building release binaries"
cargo build --release --locked -q -p sentinel --bin sentinel
cargo build --release --locked -q -p sentinel-agent --bin sentinel-agent
cargo build --release --locked -q -p sentinel-tests --bin sentinel-bench-backend

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 never opened" >&2
    return 1
}
wait_socket() {
    for _ in $(seq 200); do
        [[ -S $1 ]] && return 0
        sleep 0.05
    done
    echo "socket $1 never appeared" >&2
    return 1
}

backend_port=$(free_port)
sentinel_port=$(free_port)
admin_port=$(free_port)
agent_port=$(free_port)
socket="$work/allow.sock"

target/release/sentinel-bench-backend "127.0.0.1:$backend_port" bench 1 >/dev/null &
pids+=($!)
RUST_LOG=warn target/release/sentinel-agent allow --unix-socket "$socket" &
pids+=($!)
RUST_LOG=warn target/release/sentinel-agent allow --grpc "127.0.0.1:$agent_port" &
pids+=($!)
wait_port "$backend_port"
wait_port "$agent_port"
wait_socket "$socket"

cat >"$work/sentinel.kdl" <<KDL
server { worker-threads $WORKERS; }
observability { logging { level "warn"; access-log #false; }; }
listeners { listener "http" { address "127.0.0.1:$sentinel_port"; }; }
upstreams {
    upstream "backend" {
        target "127.0.0.1:$backend_port"
        connection-pool { max-connections 4096; max-idle 256; }
    }
}
agents {
    agent "uds" { unix-socket "$socket"; timeout-ms 1000; failure-mode "closed"; }
    agent "tcp" { grpc "http://127.0.0.1:$agent_port"; timeout-ms 1000; failure-mode "closed"; }
}
routes {
    route "none" { matches { path-prefix "/none"; }; upstream "backend"; }
    route "uds" { matches { path-prefix "/uds"; }; upstream "backend"; agents "uds"; }
    route "tcp" { matches { path-prefix "/tcp"; }; upstream "backend"; agents "tcp"; }
}
KDL
target/release/sentinel --config "$work/sentinel.kdl" --admin-addr "127.0.0.1:$admin_port" 2>"$work/sentinel.log" &
pids+=($!)
wait_port "$sentinel_port"

cat >"$work/paced.lua" <<LUA
function delay() return $RATE_DELAY_MS end
LUA

to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
        else print v }'
}
# measure NAME -> prints a row; sets M_RPS F_P99 F_P50
measure() {
    local name=$1 url="http://127.0.0.1:$sentinel_port/$1"
    wrk -t1 -c"$CONNECTIONS" -d2s "$url" >/dev/null
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$work/$name.sat"
    wrk -t1 -c"$RATE_CONNECTIONS" -d"${DURATION}s" --latency -s "$work/paced.lua" "$url" >"$work/$name.rate"
    M_RPS=$(awk '/^Requests\/sec/ {print $2}' "$work/$name.sat")
    M_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.sat")")
    F_P50=$(to_ms "$(awk '$1=="50%" {print $2}' "$work/$name.rate")")
    F_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.rate")")
    local errors
    errors=$(cat "$work/$name.sat" "$work/$name.rate" | awk '/Non-2xx|Socket errors/ {print}')
    [[ -n $errors ]] && echo "   $name: $errors"
    printf "%-6s %12s %12s %12s %12s\n" "$name" "$M_RPS" "${M_P99}ms" "${F_P50}ms" "${F_P99}ms"
}
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "==> saturation: wrk -t1 -c$CONNECTIONS -d${DURATION}s; fixed rate: $RATE_CONNECTIONS connections, one request per ${RATE_DELAY_MS} ms each; $ROUNDS alternating rounds; proxy with $WORKERS worker(s), agents on one thread each; $(nproc) cores shared by all"
printf "%-6s %12s %12s %12s %12s\n" "route" "sat req/s" "sat p99" "paced p50" "paced p99"
declare -A rps_all p99_all
for round in $(seq "$ROUNDS"); do
    for name in none uds tcp; do
        measure "$name"
        rps_all[$name]="${rps_all[$name]:-} $M_RPS"
        p99_all[$name]="${p99_all[$name]:-} $F_P99"
    done
done
declare -A rps p99
for name in none uds tcp; do
    # shellcheck disable=SC2086
    rps[$name]=$(median ${rps_all[$name]})
    # shellcheck disable=SC2086
    p99[$name]=$(median ${p99_all[$name]})
done
echo "---- medians over $ROUNDS rounds, against the route without an agent (same process, same run)"
printf "%-6s %12s %14s\n" "route" "sat req/s" "paced p99"
for name in none uds tcp; do
    printf "%-6s %12s %12sms\n" "$name" "${rps[$name]}" "${p99[$name]}"
done
for name in uds tcp; do
    awk -v n="$name" -v r="${rps[$name]}" -v r0="${rps[none]}" -v p="${p99[$name]}" -v p0="${p99[none]}" 'BEGIN {
        printf "%-4s throughput %.2f x (cost %.0f %%)   added p99 at fixed rate %.0f us%s\n", n, r / r0, (1 - r / r0) * 100, (p - p0) * 1000, (n == "uds" ? " (goal < 150 us)" : "")
    }'
done
if grep -q -i "error\|warn" "$work/sentinel.log"; then
    echo "sentinel logged:"; grep -i "error\|warn" "$work/sentinel.log" | head -5
fi
