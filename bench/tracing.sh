#!/usr/bin/env bash
# Tracing benchmark: what OTLP tracing costs on the request path, and that a
# collector which is down costs nothing but dropped spans.
# Four sentinel proxies side by side in one run, the same backend and
# config except `observability.tracing`:
#   off       tracing off
#   sampled   sampling-rate 0.01 (the seeds' example), the live collector
#   live      sampling-rate 1.0, a live OTLP/gRPC collector (sentinel-otlp-sink)
#   refused   sampling-rate 1.0, a collector port nobody listens on
#   blackhole sampling-rate 1.0, a collector that accepts TCP and never answers
# each measured (a) at saturation (wrk, keep-alive): throughput and p99;
# (b) at a fixed offered rate (wrk with a per-connection delay): p50/p99.
# Ratios are against `off`, measured in the same run, rounds alternating.
# Afterwards it prints the spans each proxy exported and dropped (its own
# counters) and what the live collector received.
#
#   bench/tracing.sh
#   DURATION=10 CONNECTIONS=50 ROUNDS=3 bench/tracing.sh
#
# Everything listens on 127.0.0.1. Nothing here is a test: the figures go to
# docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-1}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-20}
RATE_DELAY_MS=${RATE_DELAY_MS:-10}   # 20 connections x one request per ~10 ms ≈ 2,000 req/s
ROUNDS=${ROUNDS:-2}

scripts/ensure-deps wrk=wrk python3=python3 curl=curl

echo "==> building release binaries"
cargo build --release --locked -q -p sentinel --bin sentinel
cargo build --release --locked -q -p sentinel-tests --bin sentinel-bench-backend --bin sentinel-otlp-sink

# shellcheck source=bench/lib.sh
source bench/lib.sh


backend_port=$(free_port)
sink_port=$(free_port)
refused_port=$(free_port)
blackhole_port=$(free_port)
target/release/sentinel-bench-backend "127.0.0.1:$backend_port" bench 1 >/dev/null &
pids+=($!)
target/release/sentinel-otlp-sink "127.0.0.1:$sink_port" >"$work/sink.out" &
sink_pid=$!
pids+=($sink_pid)
# Accepts connections into its backlog and never reads: every export call
# waits for its 5 s timeout.
python3 -c "import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $blackhole_port)); s.listen(4096)
time.sleep(1e9)" &
pids+=($!)
wait_port "$backend_port"
wait_port "$sink_port"
wait_port "$blackhole_port"

declare -A port admin
names=(off sampled live refused blackhole)
for name in "${names[@]}"; do
    port[$name]=$(free_port)
    admin[$name]=$(free_port)
    case $name in
        off) tracing='tracing { enabled #false; }' ;;
        sampled) tracing="tracing { backend \"otlp\" { endpoint \"http://127.0.0.1:$sink_port\"; }; sampling-rate 0.01; }" ;;
        live) tracing="tracing { backend \"otlp\" { endpoint \"http://127.0.0.1:$sink_port\"; }; sampling-rate 1.0; }" ;;
        refused) tracing="tracing { backend \"otlp\" { endpoint \"http://127.0.0.1:$refused_port\"; }; sampling-rate 1.0; }" ;;
        blackhole) tracing="tracing { backend \"otlp\" { endpoint \"http://127.0.0.1:$blackhole_port\"; }; sampling-rate 1.0; }" ;;
    esac
    cat >"$work/$name.kdl" <<KDL
server { worker-threads $WORKERS; }
observability {
    logging { level "warn"; access-log #false; }
    $tracing
}
listeners { listener "http" { address "127.0.0.1:${port[$name]}"; }; }
upstreams {
    upstream "backend" {
        target "127.0.0.1:$backend_port"
        connection-pool { max-connections 4096; max-idle 256; }
    }
}
routes { route "all" { matches { path-prefix "/"; }; upstream "backend"; }; }
KDL
    target/release/sentinel --config "$work/$name.kdl" --admin-addr "127.0.0.1:${admin[$name]}" 2>"$work/$name.log" &
    pids+=($!)
done
for name in "${names[@]}"; do wait_port "${port[$name]}"; done

cat >"$work/paced.lua" <<LUA
function delay() return $RATE_DELAY_MS end
LUA

measure() {
    local name=$1 url="http://127.0.0.1:${port[$1]}/"
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
    printf "%-10s %12s %12s %12s %12s\n" "$name" "$M_RPS" "${M_P99}ms" "${F_P50}ms" "${F_P99}ms"
}

echo "==> saturation: wrk -t1 -c$CONNECTIONS -d${DURATION}s; fixed rate: $RATE_CONNECTIONS connections, one request per ${RATE_DELAY_MS} ms each; $ROUNDS alternating rounds; each proxy $WORKERS worker(s); $(nproc) cores shared by all"
printf "%-10s %12s %12s %12s %12s\n" "tracing" "sat req/s" "sat p99" "paced p50" "paced p99"
declare -A rps_all sp99_all p50_all p99_all
for round in $(seq "$ROUNDS"); do
    for name in "${names[@]}"; do
        measure "$name"
        rps_all[$name]="${rps_all[$name]:-} $M_RPS"
        sp99_all[$name]="${sp99_all[$name]:-} $M_P99"
        p50_all[$name]="${p50_all[$name]:-} $F_P50"
        p99_all[$name]="${p99_all[$name]:-} $F_P99"
    done
done
declare -A rps sp99 p50 p99
for name in "${names[@]}"; do
    # shellcheck disable=SC2086
    rps[$name]=$(median ${rps_all[$name]})
    # shellcheck disable=SC2086
    sp99[$name]=$(median ${sp99_all[$name]})
    # shellcheck disable=SC2086
    p50[$name]=$(median ${p50_all[$name]})
    # shellcheck disable=SC2086
    p99[$name]=$(median ${p99_all[$name]})
done
echo "---- medians over $ROUNDS rounds, against tracing off (same run)"
printf "%-10s %12s %10s %12s %12s %12s\n" "tracing" "sat req/s" "ratio" "sat p99" "paced p50" "paced p99"
for name in "${names[@]}"; do
    awk -v n="$name" -v r="${rps[$name]}" -v r0="${rps[off]}" -v s="${sp99[$name]}" -v a="${p50[$name]}" -v b="${p99[$name]}" \
        'BEGIN { printf "%-10s %12s %9.2fx %10.2fms %10.2fms %10.2fms\n", n, r, r / r0, s, a, b }'
done
echo "---- spans per proxy (its own counters: sentinel_tracing_spans_*)"
for name in sampled live refused blackhole; do
    m=$(curl -s "http://127.0.0.1:${admin[$name]}/metrics")
    exported=$(awk '/^sentinel_tracing_spans_exported_total/ {s += $NF} END {print s + 0}' <<<"$m")
    full=$(awk '/^sentinel_tracing_spans_dropped_total/ && /queue_full/ {s += $NF} END {print s + 0}' <<<"$m")
    failed=$(awk '/^sentinel_tracing_spans_dropped_total/ && /reason="export"/ {s += $NF} END {print s + 0}' <<<"$m")
    printf "%-10s exported %10s   dropped: queue_full %10s, export %10s\n" "$name" "$exported" "$full" "$failed"
done
kill "$sink_pid" 2>/dev/null || true
wait "$sink_pid" 2>/dev/null || true
echo "live collector: $(cat "$work/sink.out")"
for name in "${names[@]}"; do
    if grep -q -i "error\|panic" "$work/$name.log"; then
        echo "$name logged:"; grep -i "error\|panic" "$work/$name.log" | head -5
    fi
done
