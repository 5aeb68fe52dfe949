#!/usr/bin/env bash
# Runs the benchmark suite on this machine and writes docs/benchmarks.md.
#
#   bench/run.sh                 # about 6 minutes on 2 cores, after the build
#   BENCH_REPS=1 BENCH_DURATION=2s BENCH_WRK_DURATION=2s bench/run.sh   # a quick look
#
# Load generators run on CPU 0, everything under test (backend, registry, proxies, nginx,
# HAProxy) on CPU 1, one worker thread each. Targets are interleaved within each
# repetition, and the report gives medians of per-repetition ratios, which are stable on
# a noisy machine when absolute figures are not. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${BENCH_REPS:-3}
DURATION=${BENCH_DURATION:-5s}
RATES=${BENCH_RATES:-"1000 2000 4000"}
SEQ_REQUESTS=${BENCH_SEQ_REQUESTS:-5000}
WRK_DURATION=${BENCH_WRK_DURATION:-5s}
WATCH_TRIALS=${BENCH_WATCH_TRIALS:-200}
BASE=${BENCH_PORT_BASE:-18100}
OUT=${BENCH_OUT:-docs/benchmarks.md}

for tool in taskset wrk nginx haproxy python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx haproxy wrk)" >&2; exit 1; }
done

cargo build --release -q -p mesh-proxy -p mesh-registry -p mesh-bench
BIN=$PWD/target/release
TMP=$(mktemp -d)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BACKEND=$((BASE + 0)); REGISTRY=$((BASE + 1)); OUTBOUND=$((BASE + 2)); ADMIN=$((BASE + 3))
INBOUND=$((BASE + 4)); SC_OUTBOUND=$((BASE + 5)); SC_ADMIN=$((BASE + 6)); NGINX=$((BASE + 7))
HAPROXY=$((BASE + 8)); REGISTRY2=$((BASE + 9))
for p in $(seq "$BASE" $((BASE + 9))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; fi
done

# Logs of the processes under test go to files: a terminal would slow them down.
under_test() { TOKIO_WORKER_THREADS=1 taskset -c 1 "$@" >>"$TMP/under-test.log" 2>&1 & PIDS+=($!); }
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1" >&2; exit 1
}
# CPU ticks (utime + stime) of processes and their children threads.
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
status_kb() { local t=0; for pid in "${@:2}"; do t=$((t + $(awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"))); done; echo "$t"; }
record() { echo "$1" >>"$RESULTS"; }

echo "starting the targets" >&2
under_test "$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND"
under_test "$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY"
REGISTRY_PID=$!
wait_port "$BACKEND"; wait_port "$REGISTRY"
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1:$BACKEND\",\"ttl\":\"1h\"}"
under_test "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" \
  --outbound "127.0.0.1:$OUTBOUND" --admin "127.0.0.1:$ADMIN"
MESH_PID=$!
under_test "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --service backend \
  --app "127.0.0.1:$BACKEND" --inbound "127.0.0.1:$INBOUND" --advertise "127.0.0.1:$INBOUND" \
  --outbound "127.0.0.1:$SC_OUTBOUND" --admin "127.0.0.1:$SC_ADMIN"
SIDECAR_PID=$!

mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
under_test nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
NGINX_PID=$!
cat >"$TMP/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$HAPROXY
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND
CONF
under_test haproxy -f "$TMP/haproxy.cfg" -db
HAPROXY_PID=$!
for p in $OUTBOUND $INBOUND $NGINX $HAPROXY; do wait_port "$p"; done
NGINX_PIDS="$NGINX_PID $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null || true)"

# The sidecar registers itself; wait until the client proxy routes to it.
for _ in $(seq 100); do
  curl -fsS -o /dev/null -H 'Host: backend' "http://127.0.0.1:$OUTBOUND/" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null -H 'Host: bench' "http://127.0.0.1:$OUTBOUND/"

# name, address, Host header, processes whose CPU counts
TARGETS=(
  "direct 127.0.0.1:$BACKEND bench -"
  "mesh 127.0.0.1:$OUTBOUND bench $MESH_PID"
  "sidecars 127.0.0.1:$OUTBOUND backend $MESH_PID,$SIDECAR_PID"
  "nginx 127.0.0.1:$NGINX bench ${NGINX_PIDS// /,}"
  "haproxy 127.0.0.1:$HAPROXY bench $HAPROXY_PID"
)
sleep 1
record "{\"scenario\":\"idle\",\"mesh_rss_kb\":$(status_kb VmRSS "$MESH_PID"),\"sidecar_rss_kb\":$(status_kb VmRSS "$SIDECAR_PID"),\"nginx_rss_kb\":$(status_kb VmRSS $NGINX_PIDS),\"haproxy_rss_kb\":$(status_kb VmRSS "$HAPROXY_PID"),\"registry_rss_kb\":$(status_kb VmRSS "$REGISTRY_PID")}"

load() { taskset -c 0 "$BIN/mesh-bench" "$@"; }

echo "S1: sequential requests" >&2
for rep in $(seq "$REPS"); do
  for t in "${TARGETS[@]}"; do
    read -r name addr host _ <<<"$t"
    r=$(load seq --target "$addr" --host "$host" --requests "$SEQ_REQUESTS")
    record "{\"scenario\":\"s1\",\"rep\":$rep,\"target\":\"$name\",\"result\":$r}"
  done
done

echo "S2: fixed rates ($RATES req/s, $DURATION each)" >&2
for rep in $(seq "$REPS"); do
  for rate in $RATES; do
    for t in "${TARGETS[@]}"; do
      read -r name addr host pids <<<"$t"
      pids=${pids//,/ }; [ "$pids" = - ] && pids=""
      before=$(cpu_ticks $pids)
      r=$(load load --target "$addr" --host "$host" --rate "$rate" --duration "$DURATION")
      after=$(cpu_ticks $pids)
      record "{\"scenario\":\"s2\",\"rep\":$rep,\"rate\":$rate,\"target\":\"$name\",\"cpu_ticks\":$((after - before)),\"result\":$r}"
    done
  done
done

echo "S3: wrk, $WRK_DURATION each" >&2
for rep in $(seq "$REPS"); do
  for t in "${TARGETS[@]}"; do
    read -r name addr host _ <<<"$t"
    rps=$(taskset -c 0 wrk -t1 -c32 -d"$WRK_DURATION" -H "Host: $host" "http://$addr/" | awk '/^Requests\/sec/ {print $2}')
    record "{\"scenario\":\"s3\",\"rep\":$rep,\"target\":\"$name\",\"rps\":${rps:-0}}"
  done
done
record "{\"scenario\":\"loaded\",\"mesh_hwm_kb\":$(status_kb VmHWM "$MESH_PID"),\"sidecar_hwm_kb\":$(status_kb VmHWM "$SIDECAR_PID"),\"nginx_hwm_kb\":$(status_kb VmHWM $NGINX_PIDS),\"haproxy_hwm_kb\":$(status_kb VmHWM "$HAPROXY_PID"),\"mesh_rss_kb\":$(status_kb VmRSS "$MESH_PID")}"

if command -v perf >/dev/null && perf record -e cpu-clock -o "$TMP/probe.data" true >/dev/null 2>&1; then
  echo "profiling mesh-proxy at 4000 req/s" >&2
  load load --target "127.0.0.1:$OUTBOUND" --host bench --rate 4000 --duration 8s >/dev/null &
  LOADER=$!
  sleep 1
  perf record -q -e cpu-clock -F 2000 -g -p "$MESH_PID" -o "$TMP/perf.data" -- sleep 5 >/dev/null 2>&1 || true
  wait "$LOADER" || true
  perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -E 's/ +$//' | head -25 >"$TMP/profile.txt" || true
  perf report -i "$TMP/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -E 's/ +$//' | head -8 >"$TMP/profile-dso.txt" || true
fi

echo "S6: registry with 10k and 100k instances" >&2
under_test "$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY2"
REG2_PID=$!
wait_port "$REGISTRY2"
sleep 0.5
empty=$(status_kb VmRSS "$REG2_PID")
r1=$(load register --registry "127.0.0.1:$REGISTRY2" --count 10000)
rss10k=$(status_kb VmRSS "$REG2_PID")
r2=$(load register --registry "127.0.0.1:$REGISTRY2" --start 10000 --count 90000)
rss100k=$(status_kb VmRSS "$REG2_PID")
w=$(load watch --registry "127.0.0.1:$REGISTRY2" --watchers 100 --trials "$WATCH_TRIALS")
record "{\"scenario\":\"s6\",\"empty_rss_kb\":$empty,\"rss_10k_kb\":$rss10k,\"rss_100k_kb\":$rss100k,\"hwm_kb\":$(status_kb VmHWM "$REG2_PID"),\"register_10k\":$r1,\"register_90k\":$r2,\"watch\":$w}"

{
  echo "nproc=$(nproc)"
  echo "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "rustc=$(rustc -V)"
  echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
  echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "reps=$REPS"; echo "duration=$DURATION"; echo "wrk_duration=$WRK_DURATION"; echo "seq=$SEQ_REQUESTS"
} >"$TMP/machine.txt"
mkdir -p target/bench
cp "$RESULTS" "$TMP/machine.txt" target/bench/
if [ -f "$TMP/profile.txt" ]; then cp "$TMP/profile.txt" "$TMP/profile-dso.txt" target/bench/; fi
python3 bench/report.py target/bench "$OUT"
echo "wrote $OUT (raw results in target/bench/)" >&2
