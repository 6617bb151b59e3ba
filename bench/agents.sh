#!/usr/bin/env bash
# Agent benchmark: what one no-op external agent costs on the request path.
# One sentinel proxy, three routes side by side in one process and one run —
# no agent, a no-op agent over a Unix socket, the same agent over loopback
# TCP gRPC (two `sentinel-agent allow` processes) — each measured
#   (a) at saturation (wrk, keep-alive): throughput;
#   (b) at a fixed offered rate (wrk with a per-connection delay): p99;
#   (c) one connection, one request at a time: p50 and p99 round trip.
# It also prints the agent call latency the proxy itself measured
# (`sentinel_agent_latency_seconds`, bucket bounds).
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

# shellcheck source=bench/lib.sh
source bench/lib.sh

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

# measure NAME -> prints a row; sets M_RPS F_P99 F_P50 S_P50 S_P99
measure() {
    local name=$1 url="http://127.0.0.1:$sentinel_port/$1"
    wrk -t1 -c"$CONNECTIONS" -d2s "$url" >/dev/null
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$work/$name.sat"
    wrk -t1 -c"$RATE_CONNECTIONS" -d"${DURATION}s" --latency -s "$work/paced.lua" "$url" >"$work/$name.rate"
    wrk -t1 -c1 -d"${SERIAL_SECS:-3}s" --latency "$url" >"$work/$name.serial"
    M_RPS=$(awk '/^Requests\/sec/ {print $2}' "$work/$name.sat")
    M_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.sat")")
    F_P50=$(to_ms "$(awk '$1=="50%" {print $2}' "$work/$name.rate")")
    F_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.rate")")
    S_P50=$(to_ms "$(awk '$1=="50%" {print $2}' "$work/$name.serial")")
    S_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.serial")")
    local errors
    errors=$(cat "$work/$name.sat" "$work/$name.rate" "$work/$name.serial" | awk '/Non-2xx|Socket errors/ {print}')
    [[ -n $errors ]] && echo "   $name: $errors"
    printf "%-6s %12s %12s %12s %12s %12s %12s\n" "$name" "$M_RPS" "${M_P99}ms" "${F_P50}ms" "${F_P99}ms" "${S_P50}ms" "${S_P99}ms"
}

echo "==> saturation: wrk -t1 -c$CONNECTIONS -d${DURATION}s; fixed rate: $RATE_CONNECTIONS connections, one request per ${RATE_DELAY_MS} ms each; $ROUNDS alternating rounds; proxy with $WORKERS worker(s), agents on one thread each; $(nproc) cores shared by all"
printf "%-6s %12s %12s %12s %12s %12s %12s\n" "route" "sat req/s" "sat p99" "paced p50" "paced p99" "serial p50" "serial p99"
declare -A rps_all p99_all sp50_all sp99_all
for round in $(seq "$ROUNDS"); do
    for name in none uds tcp; do
        measure "$name"
        rps_all[$name]="${rps_all[$name]:-} $M_RPS"
        p99_all[$name]="${p99_all[$name]:-} $F_P99"
        sp50_all[$name]="${sp50_all[$name]:-} $S_P50"
        sp99_all[$name]="${sp99_all[$name]:-} $S_P99"
    done
done
declare -A rps p99 sp50 sp99
for name in none uds tcp; do
    # shellcheck disable=SC2086
    rps[$name]=$(median ${rps_all[$name]})
    # shellcheck disable=SC2086
    p99[$name]=$(median ${p99_all[$name]})
    # shellcheck disable=SC2086
    sp50[$name]=$(median ${sp50_all[$name]})
    # shellcheck disable=SC2086
    sp99[$name]=$(median ${sp99_all[$name]})
done
echo "---- medians over $ROUNDS rounds, against the route without an agent (same process, same run)"
printf "%-6s %12s %14s %14s %14s\n" "route" "sat req/s" "paced p99" "serial p50" "serial p99"
for name in none uds tcp; do
    printf "%-6s %12s %12sms %12sms %12sms\n" "$name" "${rps[$name]}" "${p99[$name]}" "${sp50[$name]}" "${sp99[$name]}"
done
for name in uds tcp; do
    awk -v n="$name" -v r="${rps[$name]}" -v r0="${rps[none]}" -v p="${p99[$name]}" -v p0="${p99[none]}" \
        -v s5="${sp50[$name]}" -v s50="${sp50[none]}" -v s9="${sp99[$name]}" -v s90="${sp99[none]}" 'BEGIN {
        printf "%-4s throughput %.2f x (cost %.0f %%)   added p99: fixed rate %.0f us, serial %.0f us%s   added serial p50 %.0f us\n", n, r / r0, (1 - r / r0) * 100, (p - p0) * 1000, (s9 - s90) * 1000, (n == "uds" ? " (goal < 150 us)" : ""), (s5 - s50) * 1000
    }'
done
echo "---- agent call latency as the proxy measured it (sentinel_agent_latency_seconds; the bucket that holds the quantile)"
curl -s "http://127.0.0.1:$admin_port/metrics" >"$work/metrics" || true
for name in uds tcp; do
    awk -v n="$name" -F'[{}" ]+' '
        $1 == "sentinel_agent_latency_seconds_bucket" && $3 == n { le[++k] = $5; c[k] = $NF }
        END {
            total = c[k]; if (total == 0) { print n ": no calls"; exit }
            for (i = 1; i <= k; i++) { if (!p50 && c[i] >= total * 0.5) p50 = le[i]; if (!p99 && c[i] >= total * 0.99) p99 = le[i] }
            printf "%-4s %d calls: p50 <= %s s, p99 <= %s s\n", n, total, p50, p99
        }' "$work/metrics"
done
if grep -q -i "error\|warn" "$work/sentinel.log"; then
    echo "sentinel logged:"; grep -i "error\|warn" "$work/sentinel.log" | head -5
fi
