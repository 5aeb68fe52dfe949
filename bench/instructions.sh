#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind for
# mesh-proxy (one hop) and nginx, over the same sequential requests to the same backend.
# Instruction counts do not depend on the machine's load, so this figure is steady where
# timings are not; it leaves out the kernel (syscalls, TCP), which costs both about the
# same per request.
#
#   bench/instructions.sh [REQUESTS]        # prints one JSON line; needs valgrind, nginx
#
# Called by bench/run.sh when valgrind is installed. Binaries come from target/dist.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REQUESTS=${1:-2000}
BASE=${BENCH_INSTR_PORT_BASE:-18150}
BIN=$PWD/target/dist
BACKEND=$BASE; REGISTRY=$((BASE + 1)); PROXY=$((BASE + 2)); ADMIN=$((BASE + 3)); NGINX=$((BASE + 4))
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT


# Counts the instructions `pid` runs while REQUESTS sequential requests go through `port`.
count() {
  local pid=$1 port=$2 out=$3
  "$BIN/mesh-bench" seq --target "127.0.0.1:$port" --requests 200 --warmup 0 >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  "$BIN/mesh-bench" seq --target "127.0.0.1:$port" --requests "$REQUESTS" --warmup 0 >/dev/null
  callgrind_control -i off "$pid" >/dev/null 2>&1
  # A dump goes to "$out.1"; its "totals:" line counts what ran while instrumented.
  callgrind_control -d "$pid" >/dev/null 2>&1
  for _ in $(seq 300); do grep -qs '^totals:' "$out.1" && break; sleep 0.1; done
  kill -KILL "$pid"
  awk '/^totals:/ {print $2}' "$out.1"
}

"$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND" >>"$TMP/log" 2>&1 & PIDS+=($!)
"$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY" >>"$TMP/log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"; wait_port "$REGISTRY"
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1:$BACKEND\",\"ttl\":\"1h\"}"

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.mesh" \
  "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --outbound "127.0.0.1:$PROXY" \
  --admin "127.0.0.1:$ADMIN" --threads 1 >>"$TMP/log" 2>&1 &
MESH=$!
wait_port "$PROXY" 300  # valgrind starts slowly
mesh=$(count "$MESH" "$PROXY" "$TMP/cg.mesh")
wait "$MESH" 2>/dev/null || true

nginx_conf "$TMP/nginx" "$NGINX" "$BACKEND" "daemon off; master_process off;"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.nginx" \
  nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >>"$TMP/log" 2>&1 &
NGINX_PID=$!
wait_port "$NGINX" 300
nginx=$(count "$NGINX_PID" "$NGINX" "$TMP/cg.nginx")
wait "$NGINX_PID" 2>/dev/null || true

python3 -c "import json,sys; m,n,r=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]); print(json.dumps({'requests':r,'mesh_per_request':m/r,'nginx_per_request':n/r,'ratio':m/n}))" \
  "$mesh" "$nginx" "$REQUESTS"
