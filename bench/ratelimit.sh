#!/usr/bin/env bash
# Rate-limit benchmark: one sentinel proxy, four routes side by side in one
# process and one run — no filter, a local filter, a Redis filter (one
# redis-server) and a Redis Cluster filter (three masters) — each measured
#   (a) at saturation (wrk, keep-alive): throughput and p99;
#   (b) at a fixed offered rate (wrk with a per-connection delay): p99.
# The limits are set far above the load, so every request is admitted and
# the figures show what the decision costs, not rejections.
# Ratios are against the route without a filter, measured in the same run.
#
#   bench/ratelimit.sh
#   DURATION=10 CONNECTIONS=50 KEY=client-ip bench/ratelimit.sh
#
# Every server listens on 127.0.0.1 only. Nothing here is a test: the
# figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-1}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-20}
RATE_DELAY_MS=${RATE_DELAY_MS:-10}   # 20 connections x one request per ~10 ms ≈ 2,000 req/s
KEY=${KEY:-client-ip}                # client-ip: one hot key; header:x-client with random keys below

scripts/ensure-deps wrk=wrk python3=python3 redis-server=redis-server redis-cli=redis-tools

echo "==> building release binaries"
cargo build --release --locked -q -p sentinel --bin sentinel
cargo build --release --locked -q -p sentinel-tests --bin sentinel-bench-backend

# shellcheck source=bench/lib.sh
source bench/lib.sh

redis() {  # redis PORT [extra args]: a throwaway redis-server
    local port=$1; shift
    mkdir -p "$work/redis-$port"
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$work/redis-$port" --logfile "$work/redis-$port/log" "$@" &
    pids+=($!)
    wait_port "$port"
}

single=$(free_port)
redis "$single"
cluster=()
for _ in 1 2 3; do
    p=$(free_port)
    redis "$p" --cluster-enabled yes --cluster-port "$(free_port)" --cluster-config-file nodes.conf
    cluster+=("127.0.0.1:$p")
done
redis-cli --cluster create "${cluster[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 100); do
    redis-cli -p "${cluster[0]#*:}" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
done

backend_port=$(free_port)
sentinel_port=$(free_port)
admin_port=$(free_port)
target/release/sentinel-bench-backend "127.0.0.1:$backend_port" bench 1 >/dev/null &
pids+=($!)
wait_port "$backend_port"

cluster_url="redis://$(IFS=,; echo "${cluster[*]}")"
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
filters {
    filter "local" { type "rate-limit"; max-rps 10000000; burst 100000000; key "$KEY"; }
    filter "redis" {
        type "rate-limit"; max-rps 10000000; burst 100000000; key "$KEY"
        backend "redis"; algorithm "token-bucket"; redis-url "redis://127.0.0.1:$single"; redis-pool-size ${POOL:-10}
        fallback-to-local #false; on-redis-failure "closed"
    }
    filter "cluster" {
        type "rate-limit"; max-rps 10000000; burst 100000000; key "$KEY"
        backend "redis"; algorithm "token-bucket"; redis-url "$cluster_url"
        fallback-to-local #false; on-redis-failure "closed"
    }
}
routes {
    route "none" { matches { path-prefix "/none"; }; upstream "backend"; }
    route "local" { matches { path-prefix "/local"; }; upstream "backend"; filters "local"; }
    route "redis" { matches { path-prefix "/redis"; }; upstream "backend"; filters "redis"; }
    route "cluster" { matches { path-prefix "/cluster"; }; upstream "backend"; filters "cluster"; }
}
KDL
target/release/sentinel --config "$work/sentinel.kdl" --admin-addr "127.0.0.1:$admin_port" 2>"$work/sentinel.log" &
pids+=($!)
wait_port "$sentinel_port"

cat >"$work/paced.lua" <<LUA
function delay() return $RATE_DELAY_MS end
LUA
cat >"$work/keys.lua" <<'LUA'
request = function()
    return wrk.format(nil, nil, { ["x-client"] = tostring(math.random(1, 100000)) })
end
LUA
script=()
[[ $KEY == header:* ]] && script=(-s "$work/keys.lua")

# measure NAME -> prints a row; sets M_RPS M_P99 F_P99
measure() {
    local name=$1 url="http://127.0.0.1:$sentinel_port/$1"
    wrk -t1 -c"$CONNECTIONS" -d2s "${script[@]}" "$url" >/dev/null
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" "$url" >"$work/$name.sat"
    wrk -t1 -c"$RATE_CONNECTIONS" -d"${DURATION}s" --latency -s "$work/paced.lua" "$url" >"$work/$name.rate"
    M_RPS=$(awk '/^Requests\/sec/ {print $2}' "$work/$name.sat")
    M_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.sat")")
    F_RPS=$(awk '/^Requests\/sec/ {print $2}' "$work/$name.rate")
    F_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$work/$name.rate")")
    local errors
    errors=$(cat "$work/$name.sat" "$work/$name.rate" | awk '/Non-2xx|Socket errors/ {print}')
    [[ -n $errors ]] && echo "   $name: $errors"
    printf "%-8s %12s %12s %14s %12s\n" "$name" "$M_RPS" "${M_P99}ms" "$F_RPS" "${F_P99}ms"
}

echo "==> key $KEY; saturation: wrk -t1 -c$CONNECTIONS -d${DURATION}s; fixed rate: $RATE_CONNECTIONS connections, one request per ${RATE_DELAY_MS} ms each; proxy with $WORKERS worker(s); $(nproc) cores shared by all"
printf "%-8s %12s %12s %14s %12s\n" "route" "sat req/s" "sat p99" "paced req/s" "paced p99"
declare -A rps p99 fp99
for name in none local redis cluster; do
    measure "$name"
    rps[$name]=$M_RPS; p99[$name]=$M_P99; fp99[$name]=$F_P99
done
echo "---- against the route without a filter (same process, same run)"
for name in local redis cluster; do
    awk -v n="$name" -v r="${rps[$name]}" -v r0="${rps[none]}" -v p="${fp99[$name]}" -v p0="${fp99[none]}" 'BEGIN {
        printf "%-8s throughput %.2f x (cost %.0f %%, target < 20 %%)   added p99 at fixed rate %.2f ms (target < 1 ms)\n", n, r / r0, (1 - r / r0) * 100, p - p0
    }'
done
if grep -q -i "error\|warn" "$work/sentinel.log"; then
    echo "sentinel logged:"; grep -i "error\|warn" "$work/sentinel.log" | head -5
fi
