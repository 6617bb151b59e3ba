#!/usr/bin/env bash
# Proxy benchmark: sentinel against Debian's nginx, both proxying to the same
# bare hyper backend (HTTP/1.1 keep-alive upstream), in every configuration
# of issue 20, in one run:
#
#   default  both proxies' default worker count (sentinel `worker-threads 0`,
#            nginx `worker_processes auto`: one per core), wrk -t2 -c64
#   one      1 worker each, wrk -t1 -c50
#   h2c      HTTP/2 downstream, cleartext with prior knowledge, h2load
#   h2tls    HTTP/2 downstream over TLS (h2 via ALPN), h2load
#   tls      TLS termination with HTTP/1.1 (rustls vs nginx's OpenSSL), wrk
#
# Each mode starts a fresh sentinel and a fresh nginx, runs ROUNDS rounds
# that alternate which proxy goes first, and reports medians: req/s, p50,
# p99, the proxies' peak RSS (VmHWM summed over the process and its
# children) and the sentinel/nginx ratios. The wrk modes also measure the
# bare backend with the same load. wrk latencies are wrk's own histogram;
# h2load latencies are computed from its per-request log (--log-file).
#
#   bench/proxy.sh                              # every mode, defaults below
#   MODES="default tls" ROUNDS=5 bench/proxy.sh # a subset
#   DURATION=2 ROUNDS=1 SKIP_BUILD=1 bench/proxy.sh
#
# The raw wrk/h2load outputs, h2load's per-request logs (gzipped), the
# configs and the proxies' logs are kept in $OUT (default
# bench/out/proxy-<timestamp>; bench/out/ ignores itself in git).
#
# Every server listens on 127.0.0.1 only. Nothing here is a test: the
# figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=${MODES:-"default one h2c h2tls tls"}
DURATION=${DURATION:-10}       # seconds measured per run
WARMUP=${WARMUP:-2}            # seconds of load before each measured run
ROUNDS=${ROUNDS:-3}            # sentinel and nginx alternate; medians reported
WORKERS=${WORKERS:-0}          # workers in default/h2c/h2tls/tls; 0 = one per core (nginx: auto)
THREADS=${THREADS:-2}          # wrk/h2load threads in default/h2c/h2tls/tls
CONNECTIONS=${CONNECTIONS:-64} # connections in default/h2c/h2tls/tls
ONE_THREADS=${ONE_THREADS:-1}  # wrk threads in mode one
ONE_CONNECTIONS=${ONE_CONNECTIONS:-50}
H2_STREAMS=${H2_STREAMS:-10}   # h2load -m: concurrent streams per connection
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
# nginx closes a client connection after 1000 requests by default (and an
# upstream one likewise); h2load does not reconnect after that GOAWAY, and
# sentinel sets no such cap, so both are raised for an equal footing.
NGINX_KEEPALIVE_REQUESTS=${NGINX_KEEPALIVE_REQUESTS:-1000000000}
OUT=${OUT:-bench/out/proxy-$(date +%Y%m%d-%H%M%S)}

for m in $MODES; do
    case $m in
        default | one | h2c | h2tls | tls) ;;
        *) echo "unknown mode '$m' (modes: default one h2c h2tls tls)" >&2; exit 2 ;;
    esac
done

scripts/ensure-deps nginx=nginx-light wrk=wrk python3=python3 h2load=nghttp2-client \
    openssl=openssl curl=curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    echo "==> SKIP_BUILD=1: using the release binaries in target/release"
else
    echo "==> building release binaries"
    cargo build --release --locked -q -p sentinel -p sentinel-tests
fi
for bin in sentinel sentinel-bench-backend; do
    [[ -x target/release/$bin ]] || { echo "target/release/$bin is missing" >&2; exit 1; }
done

mkdir -p "$OUT"
if [[ $OUT == bench/out/* && ! -e bench/out/.gitignore ]]; then
    echo '*' >bench/out/.gitignore
fi
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/output.txt") 2>&1

# shellcheck source=bench/lib.sh
source bench/lib.sh
sentinel_pid=""
bench_cleanup_extra() {
    [[ -n $sentinel_pid ]] && kill "$sentinel_pid" 2>/dev/null
    local f
    for f in "$work"/*/nginx.pid; do
        [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null
    done
    return 0
}
unset SENTINEL_WORKERS  # it would override the worker counts below
# A copy of the binaries, so that a build during the run cannot swap them.
mkdir -p "$work/bin"
cp target/release/sentinel target/release/sentinel-bench-backend "$work/bin/"

# What this nginx can do: HTTP/2 and TLS modules, and the h2c syntax
# (`http2 on;` from 1.25.1, `listen … http2` before, which then serves
# HTTP/2 with prior knowledge only).
nginx_v=$("$NGINX" -V 2>&1)
nginx_version=$(sed -n 's|^nginx version: nginx/\([0-9.]*\).*|\1|p' <<<"$nginx_v")
nginx_h2=0; nginx_ssl=0; nginx_new_h2=0
grep -q -- --with-http_v2_module <<<"$nginx_v" && nginx_h2=1
grep -q -- --with-http_ssl_module <<<"$nginx_v" && nginx_ssl=1
[[ $(printf '%s\n' 1.25.1 "$nginx_version" | sort -V | head -1) == 1.25.1 ]] && nginx_new_h2=1

# A throwaway self-signed certificate (ECDSA P-256) for both proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

backend_port=$(free_port)
"$work/bin/sentinel-bench-backend" "127.0.0.1:$backend_port" bench "$BACKEND_WORKERS" >/dev/null &
pids+=($!)
wait_port "$backend_port"

# Peak RSS (VmHWM) in KiB summed over a pid and its children.
hwm_kb() {
    local total=0 p v
    for p in "$1" $(pgrep -P "$1" || true); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# start_sentinel DIR WORKERS KIND PORT: KIND is http, h2c or https.
start_sentinel() {
    local dir=$1 w=$2 kind=$3 port=$4 listener
    local admin_port
    admin_port=$(free_port)
    case $kind in
        http) listener="address \"127.0.0.1:$port\";" ;;
        h2c) listener="address \"127.0.0.1:$port\"; http2 #true;" ;;
        https) listener="address \"127.0.0.1:$port\"; protocol \"https\"; tls { cert-file \"$work/cert.pem\"; key-file \"$work/key.pem\"; };" ;;
    esac
    cat >"$dir/sentinel.kdl" <<KDL
server { worker-threads $w; }
observability { logging { level "warn"; access-log #false; }; }
listeners { listener "bench" { $listener }; }
upstreams {
    upstream "backend" {
        target "127.0.0.1:$backend_port"
        connection-pool { max-connections 4096; max-idle 256; }
    }
}
routes { route "all" { upstream "backend"; }; }
KDL
    "$work/bin/sentinel" --config "$dir/sentinel.kdl" --admin-addr "127.0.0.1:$admin_port" \
        2>"$dir/sentinel.log" &
    sentinel_pid=$!
    wait_port "$port"
}

stop_sentinel() {
    kill "$sentinel_pid" 2>/dev/null || true
    wait "$sentinel_pid" 2>/dev/null || true
    sentinel_pid=""
}

# start_nginx DIR WORKERS KIND PORT: KIND is http, h2c or https.
start_nginx() {
    local dir=$1 w=$2 kind=$3 port=$4 listen extra="" user_line=""
    [[ $w == 0 ]] && w=auto
    [[ $(id -u) -eq 0 ]] && user_line="user root;"
    case $kind in
        http) listen="listen 127.0.0.1:$port;" ;;
        h2c)
            if ((nginx_new_h2)); then listen="listen 127.0.0.1:$port; http2 on;"
            else listen="listen 127.0.0.1:$port http2;"; fi ;;
        https)
            if ((nginx_new_h2)); then listen="listen 127.0.0.1:$port ssl; http2 on;"
            else listen="listen 127.0.0.1:$port ssl http2;"; fi
            extra="ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;" ;;
    esac
    cat >"$dir/nginx.conf" <<NGINX
$user_line
worker_processes $w;
daemon on;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests $NGINX_KEEPALIVE_REQUESTS;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream backend {
        server 127.0.0.1:$backend_port;
        keepalive 256;
        keepalive_requests $NGINX_KEEPALIVE_REQUESTS;
    }
    server {
        $listen
        $extra
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
    "$NGINX" -c "$dir/nginx.conf" -p "$dir"
    wait_port "$port"
}

stop_nginx() {
    local dir=$1 master
    [[ -f $dir/nginx.pid ]] || return 0
    master=$(cat "$dir/nginx.pid")
    kill "$master" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir/nginx.pid"
}

# check URL KIND: one request through the proxy must answer 200 from the
# backend, over the protocol the mode measures.
check() {
    local url=$1 kind=$2 args=(-sS -k -o /dev/null -w '%{http_code} %{http_version}' --max-time 5)
    case $kind in
        h2c) args+=(--http2-prior-knowledge) ;;
        h2tls) args+=(--http2) ;;
        *) args+=(--http1.1) ;;
    esac
    local got want
    got=$(curl "${args[@]}" "$url" || true)
    case $kind in h2c | h2tls) want="200 2" ;; *) want="200 1.1" ;; esac
    if [[ $got != "$want" ]]; then
        echo "   check $url ($kind): got '$got', want '$want'" >&2
        return 1
    fi
}

# load TOOL OUTFILE URL THREADS CONNS -> R_RPS R_P50 R_P99 (ms), R_ERR
load() {
    local tool=$1 out=$2 url=$3 t=$4 c=$5
    R_ERR=""
    if [[ $tool == wrk ]]; then
        wrk -t"$t" -c"$c" -d"${WARMUP}s" "$url" >/dev/null
        wrk -t"$t" -c"$c" -d"${DURATION}s" --latency "$url" >"$out"
        R_RPS=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$out")
        R_P50=$(to_ms "$(awk '$1=="50%" {print $2}' "$out")")
        R_P99=$(to_ms "$(awk '$1=="99%" {print $2}' "$out")")
        R_ERR=$(awk '/Non-2xx|Socket errors/ {sub(/^ +/, ""); printf "%s; ", $0}' "$out")
    else
        local log=${out%.*}.log
        h2load -t"$t" -c"$c" -m"$H2_STREAMS" -D "$DURATION" --warm-up-time "$WARMUP" \
            --log-file "$log" "$url" >"$out" 2>&1 || true
        [[ -f $log ]] || : >"$log"
        R_RPS=$(awk '/^finished in/ {printf "%.0f", $4}' "$out")
        # Status 0: a stream still in flight when the measured time ended.
        read -r R_P50 R_P99 <<<"$(awk -F'\t' '$2 != 0 {print $3}' "$log" | sort -n | awk '{a[NR]=$1} END {
            if (NR == 0) { print "0 0"; exit }
            i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++
            i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++
            printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }')"
        local non2xx
        non2xx=$(awk -F'\t' '$2 != 0 && ($2 < 200 || $2 > 299) {n++} END {print n + 0}' "$log")
        ((non2xx > 0)) && R_ERR+="non-2xx responses: $non2xx; "
        R_ERR+=$(awk '/^requests:/ && ($10 + $12 + $14 > 0) {printf "%s; ", $0}' "$out")
        grep -q "^Application protocol: h2" "$out" || R_ERR+="not HTTP/2 ($(grep '^Application protocol' "$out" || echo 'no protocol')); "
        gzip -f "$log"
    fi
    [[ -z $R_RPS || $R_RPS == 0 ]] && R_ERR+="no requests completed; "
    R_RPS=${R_RPS:-0} R_P50=${R_P50:-0} R_P99=${R_P99:-0}
    return 0
}

# One row per mode for the summary.
declare -A S_RPS N_RPS S_P99 N_P99 S_RSS N_RSS BARE
problems=()

# num VALUE FORMAT: a number formatted, anything else (n/a, -) as it is.
num() { awk -v v="$1" -v f="$2" 'BEGIN { if (v ~ /^[0-9.]+$/) printf f, v; else printf "%s", v }'; }

row() {  # row TARGET RPS P50 P99 RSS
    printf "   %-9s %10s req/s  p50 %8s ms  p99 %8s ms  peak RSS %s\n" \
        "$1" "$(num "$2" %.0f)" "$(num "$3" %.3f)" "$(num "$4" %.3f)" "$5"
}

run_mode() {
    local mode=$1 w tool t c kind scheme ckind
    case $mode in
        default) w=$WORKERS; tool=wrk; t=$THREADS; c=$CONNECTIONS; kind=http; scheme=http; ckind=http ;;
        one) w=1; tool=wrk; t=$ONE_THREADS; c=$ONE_CONNECTIONS; kind=http; scheme=http; ckind=http ;;
        tls) w=$WORKERS; tool=wrk; t=$THREADS; c=$CONNECTIONS; kind=https; scheme=https; ckind=tls ;;
        h2c) w=$WORKERS; tool=h2load; t=$THREADS; c=$CONNECTIONS; kind=h2c; scheme=http; ckind=h2c ;;
        h2tls) w=$WORKERS; tool=h2load; t=$THREADS; c=$CONNECTIONS; kind=https; scheme=https; ckind=h2tls ;;
    esac
    local dir=$OUT/$mode wdesc=$w who
    [[ $w == 0 ]] && wdesc="one per core ($(nproc))"
    mkdir -p "$dir" "$work/$mode"
    local cmd="wrk -t$t -c$c -d${DURATION}s (after ${WARMUP}s warm-up)"
    [[ $tool == h2load ]] && cmd="h2load -t$t -c$c -m$H2_STREAMS -D $DURATION --warm-up-time $WARMUP"
    echo
    echo "==> mode $mode: $cmd, $scheme, workers: $wdesc, $ROUNDS alternating round(s)"

    local nginx_ok=1
    case $kind in
        h2c) ((nginx_h2)) || nginx_ok=0 ;;
        https) ((nginx_ssl)) || nginx_ok=0; [[ $mode == h2tls ]] && ! ((nginx_h2)) && nginx_ok=0 ;;
    esac
    ((nginx_ok)) || echo "   nginx $nginx_version lacks the module for $mode: its side is skipped"

    if [[ $tool == wrk ]]; then
        local key="$t/$c"
        if [[ -z ${BARE[$key]:-} ]]; then
            load wrk "$dir/bare.wrk" "http://127.0.0.1:$backend_port/" "$t" "$c"
            BARE[$key]=$R_RPS
            row bare "$R_RPS" "$R_P50" "$R_P99" "-"
            [[ -n $R_ERR ]] && { echo "   bare: $R_ERR"; problems+=("$mode bare: $R_ERR"); }
        fi
        BARE[$mode]=${BARE[$key]}
    fi

    local sport nport ext=$tool
    sport=$(free_port); nport=$(free_port)
    start_sentinel "$work/$mode" "$w" "$kind" "$sport"
    check "$scheme://127.0.0.1:$sport/" "$ckind" || problems+=("$mode sentinel: check request failed")
    if ((nginx_ok)); then
        start_nginx "$work/$mode" "$w" "$kind" "$nport"
        check "$scheme://127.0.0.1:$nport/" "$ckind" || problems+=("$mode nginx: check request failed")
    fi
    if [[ $kind == https ]]; then
        local alpn=http/1.1 port
        [[ $mode == h2tls ]] && alpn=h2
        for who in sentinel nginx; do
            port=$sport
            if [[ $who == nginx ]]; then ((nginx_ok)) || continue; port=$nport; fi
            openssl s_client -connect "127.0.0.1:$port" -alpn "$alpn" </dev/null 2>/dev/null \
                | grep -E '^(New,|ALPN|Protocol|    Cipher)' >"$dir/$who-tls.txt" || true
            echo "   $who TLS: $(sed -n 's/^New, //p' "$dir/$who-tls.txt") $(grep -E '^ALPN' "$dir/$who-tls.txt" || true)"
        done
    fi

    local s_rps=() n_rps=() s_p50=() n_p50=() s_p99=() n_p99=() round order url pid
    for round in $(seq "$ROUNDS"); do
        order="sentinel nginx"
        ((round % 2 == 0)) && order="nginx sentinel"
        for who in $order; do
            if [[ $who == sentinel ]]; then
                url="$scheme://127.0.0.1:$sport/"
            else
                ((nginx_ok)) || continue
                url="$scheme://127.0.0.1:$nport/"
            fi
            load "$tool" "$dir/$who-r$round.$ext" "$url" "$t" "$c"
            if [[ $who == sentinel ]]; then
                pid=$sentinel_pid
                s_rps+=("$R_RPS"); s_p50+=("$R_P50"); s_p99+=("$R_P99")
            else
                pid=$(cat "$work/$mode/nginx.pid")
                n_rps+=("$R_RPS"); n_p50+=("$R_P50"); n_p99+=("$R_P99")
            fi
            row "$who" "$R_RPS" "$R_P50" "$R_P99" "$(( $(hwm_kb "$pid") / 1024 )) MiB"
            [[ -n $R_ERR ]] && { echo "   $who: $R_ERR"; problems+=("$mode $who round $round: $R_ERR"); }
        done
    done

    S_RSS[$mode]="$(( $(hwm_kb "$sentinel_pid") / 1024 )) MiB"
    S_RPS[$mode]=$(median "${s_rps[@]}"); S_P99[$mode]=$(median "${s_p99[@]}")
    echo "   -- medians"
    row sentinel "${S_RPS[$mode]}" "$(median "${s_p50[@]}")" "${S_P99[$mode]}" "${S_RSS[$mode]}"
    if ((nginx_ok)); then
        N_RSS[$mode]="$(( $(hwm_kb "$(cat "$work/$mode/nginx.pid")") / 1024 )) MiB"
        N_RPS[$mode]=$(median "${n_rps[@]}"); N_P99[$mode]=$(median "${n_p99[@]}")
        row nginx "${N_RPS[$mode]}" "$(median "${n_p50[@]}")" "${N_P99[$mode]}" "${N_RSS[$mode]}"
    fi

    stop_sentinel
    ((nginx_ok)) && stop_nginx "$work/$mode"
    cp "$work/$mode/sentinel.kdl" "$work/$mode/sentinel.log" "$dir/"
    if ((nginx_ok)); then cp "$work/$mode/nginx.conf" "$work/$mode/nginx-error.log" "$dir/"; fi
    if grep -q -i -E "error|panic" "$dir/sentinel.log"; then
        echo "   sentinel logged errors:"; grep -i -E "error|panic" "$dir/sentinel.log" | head -5 | sed 's/^/     /'
        problems+=("$mode: sentinel logged errors (see $dir/sentinel.log)")
    fi
    if ((nginx_ok)) && grep -q -E "\[(error|crit|alert|emerg)\]" "$dir/nginx-error.log"; then
        echo "   nginx logged errors:"; grep -E "\[(error|crit|alert|emerg)\]" "$dir/nginx-error.log" | head -5 | sed 's/^/     /'
        problems+=("$mode: nginx logged errors (see $dir/nginx-error.log)")
    fi
}

echo "==> sentinel $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty') vs nginx $nginx_version;" \
    "$(nproc) cores shared by the load generator, the proxies and the backend ($BACKEND_WORKERS worker thread(s))"
echo "==> modes: $MODES; raw outputs in $OUT"
for mode in $MODES; do run_mode "$mode"; done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || b + 0 == 0 || a == "") print "-"; else printf "%.2f", a / b }'; }
echo
echo "==> summary: medians over $ROUNDS round(s) of ${DURATION}s; p99 in ms; peak RSS; ratios sentinel/nginx" \
    "(goal: req/s ratio >= 1.00, p99 ratio <= 1.00)"
fmt="%-8s %11s %11s %6s %9s %9s %6s %10s %10s %11s\n"
# shellcheck disable=SC2059
{
    printf "$fmt" mode "sent req/s" "nginx req/s" ratio "sent p99" "nginx p99" "p99 r" "sent RSS" "nginx RSS" "bare req/s"
    for mode in $MODES; do
        printf "$fmt" "$mode" "$(num "${S_RPS[$mode]}" %.0f)" "$(num "${N_RPS[$mode]:-n/a}" %.0f)" \
            "$(ratio "${S_RPS[$mode]}" "${N_RPS[$mode]:-}")" \
            "$(num "${S_P99[$mode]}" %.3f)" "$(num "${N_P99[$mode]:-n/a}" %.3f)" \
            "$(ratio "${S_P99[$mode]}" "${N_P99[$mode]:-}")" \
            "${S_RSS[$mode]}" "${N_RSS[$mode]:-n/a}" "$(num "${BARE[$mode]:--}" %.0f)"
    done
} | tee "$OUT/summary.txt"
if ((${#problems[@]})); then
    echo
    echo "!! problems (the figures above are suspect):"
    printf '   %s\n' "${problems[@]}" | tee -a "$OUT/summary.txt"
fi
echo "raw outputs: $OUT"
