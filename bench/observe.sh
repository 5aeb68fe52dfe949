#!/usr/bin/env bash
# What traces, access logs and tap cost a proxied request: user-space instructions per
# request (callgrind, as bench/instructions.sh counts them) of one mesh-proxy hop with each
# observer on, as ratios of the same sidecar with every observer off, measured in the same
# run over the same sequential HTTP/1.1 keep-alive requests to the same backend.
#
#   bench/observe.sh [REQUESTS]          # default 2000; needs valgrind; a few minutes
#
# Configurations: `off`; `trace-0` (a collector set, sampling 0: trace context is
# rewritten, nothing recorded); `trace-1` (every request a span, exported in batches to the
# benchmark backend, which answers 200); `log` (--access-log to a file); `tap` (one tap
# open and read, matching every request); `all` (trace-1 + log + tap). Prints one JSON line.
# The collector's own work is not counted (another process): what the sidecar does to
# encode and send spans is. Ports from BENCH_OBSERVE_PORT_BASE (default 18700).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

REQUESTS=${1:-2000}
BASE=${BENCH_OBSERVE_PORT_BASE:-18700}
cargo build --release -q -p mesh-registry -p mesh-proxy -p mesh-bench
BIN=$(target_dir)/release
BACKEND=$BASE; REGISTRY=$((BASE + 1)); PROXY=$((BASE + 2)); ADMIN=$((BASE + 3))
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT

"$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND" >>"$TMP/log" 2>&1 & PIDS+=($!)
"$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY" >>"$TMP/log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"; wait_port "$REGISTRY"
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1:$BACKEND\",\"ttl\":\"1h\"}"
: >"$TMP/counts"
COLLECTOR="http://127.0.0.1:$BACKEND/v1/traces"

# Runs the sidecar under callgrind with FLAGS, a tap reader beside it when TAP is 1, and
# appends "NAME COUNT" to $TMP/counts.
measure() {
  local name=$1 tap=$2 pid reader=""
  shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.$name" \
    "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --outbound "127.0.0.1:$PROXY" \
    --admin "127.0.0.1:$ADMIN" --threads 1 "$@" >>"$TMP/$name.log" 2>&1 &
  pid=$!
  wait_port "$PROXY" 600; wait_port "$ADMIN" 600
  if [ "$tap" = 1 ]; then
    curl -sN "http://127.0.0.1:$ADMIN/tap?service=bench" >"$TMP/tap.$name" 2>/dev/null &
    reader=$!
  fi
  echo "$name $(callgrind_count "$pid" "$PROXY" "$TMP/cg.$name" "$REQUESTS" "$BIN/mesh-bench")" >>"$TMP/counts"
  wait "$pid" 2>/dev/null || true
  if [ -n "$reader" ]; then
    kill "$reader" 2>/dev/null || true
    echo "tap.$name $(wc -l <"$TMP/tap.$name")" >>"$TMP/counts"
  fi
  echo "$name done" >&2
}

measure off 0
measure trace-0 0 --trace-collector "$COLLECTOR" --trace-sample-ratio 0
measure trace-1 0 --trace-collector "$COLLECTOR" --trace-sample-ratio 1
measure log 0 --access-log "$TMP/access.log"
echo "log.lines $(wc -l <"$TMP/access.log")" >>"$TMP/counts"
measure tap 1
measure all 1 --trace-collector "$COLLECTOR" --trace-sample-ratio 1 --access-log "$TMP/access-all.log"

python3 - "$REQUESTS" "$TMP/counts" <<'PY'
import json, sys
requests = int(sys.argv[1])
rows = dict(l.split() for l in open(sys.argv[2]) if l.strip())
per = {k: int(v) / requests for k, v in rows.items() if "." not in k}
base = per["off"]
print(json.dumps({
    "requests": requests,
    "instructions_per_request": {k: round(v) for k, v in per.items()},
    "ratio_to_off": {k: round(v / base, 3) for k, v in per.items()},
    "lines_seen": {k: int(v) for k, v in rows.items() if "." in k},
}))
PY
