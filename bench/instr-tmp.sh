#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind for
# mesh-proxy (one hop), nginx, HAProxy and Envoy, over the same sequential requests to the
# same backend. Instruction counts do not depend on the machine's load, so this figure is
# steady where timings are not; it leaves out the kernel (syscalls, TCP), which costs each
# about the same per request. Every thread of a target is counted (Envoy's main thread
# beside its worker, for instance), as CPU time is in bench/run.sh.
#
#   bench/instructions.sh [REQUESTS]        # prints one JSON line; needs valgrind, nginx, haproxy
#
# Called by bench/run.sh when valgrind is installed. Binaries come from the dist build;
# Envoy as in bench/run.sh (envoy_bin in bench/lib.sh). A target that does not come up
# under valgrind is left out of the counts, and the JSON says why.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REQUESTS=${1:-2000}
BASE=${BENCH_INSTR_PORT_BASE:-18150}
BIN=$(target_dir)/dist
ENVOY_BIN=/bin/false
BACKEND=$BASE; REGISTRY=$((BASE + 1)); PROXY=$((BASE + 2)); ADMIN=$((BASE + 3)); NGINX=$((BASE + 4))
HAPROXY=$((BASE + 5)); ENVOY=$((BASE + 6)); ENVOY_ADMIN=$((BASE + 7))
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT

# Counts the instructions `pid` runs while REQUESTS sequential requests go through `port`.
count() {
  callgrind_count "$1" "$2" "$3" "$REQUESTS" "$BIN/mesh-bench"
}

# Runs COMMAND under callgrind as target NAME listening on PORT and appends "NAME COUNT" to
# $TMP/counts. When it does not listen within a minute (valgrind starts slowly, Envoy
# slowest), appends "NAME" and the last line valgrind or the target wrote to $TMP/failed.
measure() {
  local name=$1 port=$2 pid n
  shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.$name" "$@" >>"$TMP/$name.log" 2>&1 &
  pid=$!
  if (wait_port "$port" 600) 2>/dev/null; then
    n=$(count "$pid" "$port" "$TMP/cg.$name")
    wait "$pid" 2>/dev/null || true
    cp "$TMP/cg.$name.1" "/tmp/cg.$name" || true
    if [ -n "$n" ]; then echo "$name $n" >>"$TMP/counts"; else echo "$name callgrind wrote no totals" >>"$TMP/failed"; fi
  else
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$name $(grep -v '^ *$' "$TMP/$name.log" | tail -1)" >>"$TMP/failed"
  fi
}

"$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND" >>"$TMP/log" 2>&1 & PIDS+=($!)
"$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY" >>"$TMP/log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"; wait_port "$REGISTRY"
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1:$BACKEND\",\"ttl\":\"1h\"}"
: >"$TMP/counts"; : >"$TMP/failed"

measure mesh "$PROXY" "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" \
  --outbound "127.0.0.1:$PROXY" --admin "127.0.0.1:$ADMIN" --threads 1
MESH_H1_ENGINE=hyper measure mesh-hyper "$((BASE + 8))" "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" \
  --outbound "127.0.0.1:$((BASE + 8))" --admin "127.0.0.1:$((BASE + 9))" --threads 1
nginx_conf "$TMP/nginx" "$NGINX" "$BACKEND" "daemon off; master_process off;"
measure nginx "$NGINX" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf"
haproxy_conf "$TMP/haproxy.cfg" "$HAPROXY" "$BACKEND"
measure haproxy "$HAPROXY" haproxy -f "$TMP/haproxy.cfg" -db

python3 - "$REQUESTS" "$TMP/counts" "$TMP/failed" <<'PY'
import json, sys
requests = int(sys.argv[1])
counts = {name: int(n) / requests for name, n in (l.split() for l in open(sys.argv[2]) if l.strip())}
failed = dict(l.rstrip("\n").split(" ", 1) for l in open(sys.argv[3]) if l.strip())
print(json.dumps({"requests": requests, "per_request": counts, "failed": failed}))
PY
