#!/usr/bin/env bash
# Proxy benchmark: the same wrk load (keep-alive, small responses) against
#   (a) a bare hyper backend, (b) sentinel -> backend, (c) nginx -> backend,
# on this machine, one after the other. Prints req/s, p50, p99 and proxy RSS,
# and the ratios sentinel/nginx and sentinel/bare.
#
#   bench/proxy.sh                # defaults below
#   DURATION=20 CONNECTIONS=100 WORKERS=2 bench/proxy.sh
#
# Every server listens on 127.0.0.1 only. Nothing here is a test: the
# figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-1}          # proxy worker threads / nginx worker processes
WRK_THREADS=${WRK_THREADS:-1}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}            # sentinel and nginx alternate; medians reported

scripts/ensure-deps nginx=nginx-light wrk=wrk python3=python3
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

echo "==> building release binaries"
cargo build --release --locked -q -p sentinel -p sentinel-tests

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_cleanup_extra() {
    [[ -f $work/nginx.pid ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
}


backend_port=$(free_port)
sentinel_port=$(free_port)
admin_port=$(free_port)
nginx_port=$(free_port)

target/release/sentinel-bench-backend "127.0.0.1:$backend_port" bench 1 >/dev/null &
pids+=($!)
wait_port "$backend_port"

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
routes { route "all" { upstream "backend"; }; }
KDL
target/release/sentinel --config "$work/sentinel.kdl" --admin-addr "127.0.0.1:$admin_port" 2>"$work/sentinel.log" &
sentinel_pid=$!
pids+=($sentinel_pid)
wait_port "$sentinel_port"

user_line=""
[[ $(id -u) -eq 0 ]] && user_line="user root;"
cat >"$work/nginx.conf" <<NGINX
$user_line
worker_processes $WORKERS;
daemon on;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
NGINX
"$NGINX" -c "$work/nginx.conf" -p "$work"
wait_port "$nginx_port"
nginx_master=$(cat "$work/nginx.pid")

rss_kb() {  # sum of RSS over a pid and its children
    local total=0
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(ps -o rss= -p "$p" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# run NAME URL PID -> sets R_RPS R_P50 R_P99 R_RSS
run() {
    local name=$1 url=$2 pid=${3:-}
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$work/$name.wrk"
    R_RPS=$(awk '/^Requests\/sec/ {print $2}' "$work/$name.wrk")
    R_P50=$(awk '$1=="50%" {print $2}' "$work/$name.wrk")
    R_P99=$(awk '$1=="99%" {print $2}' "$work/$name.wrk")
    local errors
    errors=$(awk '/Non-2xx|Socket errors/ {print}' "$work/$name.wrk")
    [[ -n $errors ]] && echo "   $name: $errors"
    R_RSS="-"
    [[ -n $pid ]] && R_RSS="$(( $(rss_kb "$pid") / 1024 )) MiB"
    printf "%-10s %12s %10s %10s %10s\n" "$name" "$R_RPS" "$R_P50" "$R_P99" "$R_RSS"
}


echo "==> wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s, keep-alive, $ROUNDS alternating rounds; proxies with $WORKERS worker(s); $(nproc) cores shared by all"
printf "%-10s %12s %10s %10s %10s\n" "target" "req/s" "p50" "p99" "proxy RSS"
declare -a s_rps_all n_rps_all s_p99_all n_p99_all s_p50_all n_p50_all
run bare "http://127.0.0.1:$backend_port/"
bare_rps=$R_RPS
for round in $(seq "$ROUNDS"); do
    run sentinel "http://127.0.0.1:$sentinel_port/" "$sentinel_pid"
    s_rps_all+=("$R_RPS"); s_p50_all+=("$(to_ms "$R_P50")"); s_p99_all+=("$(to_ms "$R_P99")"); s_rss=$R_RSS
    run nginx "http://127.0.0.1:$nginx_port/" "$nginx_master"
    n_rps_all+=("$R_RPS"); n_p50_all+=("$(to_ms "$R_P50")"); n_p99_all+=("$(to_ms "$R_P99")"); n_rss=$R_RSS
done

s_rps=$(median "${s_rps_all[@]}"); n_rps=$(median "${n_rps_all[@]}")
s_p50=$(median "${s_p50_all[@]}"); n_p50=$(median "${n_p50_all[@]}")
s_p99=$(median "${s_p99_all[@]}"); n_p99=$(median "${n_p99_all[@]}")
echo "---- medians over $ROUNDS rounds"
printf "%-10s %12s %9sms %9sms %10s\n" "sentinel" "$s_rps" "$s_p50" "$s_p99" "$s_rss"
printf "%-10s %12s %9sms %9sms %10s\n" "nginx" "$n_rps" "$n_p50" "$n_p99" "$n_rss"
awk -v s="$s_rps" -v n="$n_rps" -v b="$bare_rps" -v sp="$s_p99" -v np="$n_p99" 'BEGIN {
    printf "sentinel/nginx throughput: %.2f   (target >= 1.00)\n", s / n
    printf "sentinel/bare  throughput: %.2f\n", s / b
    printf "sentinel/nginx p99:        %.2f   (target <= 1.00)\n", sp / np
}'
if grep -q -i "error" "$work/sentinel.log"; then
    echo "sentinel logged errors:"; grep -i error "$work/sentinel.log" | head -5
fi
