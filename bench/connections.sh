#!/usr/bin/env bash
# Memory per open connection: N idle keep-alive client connections (each after one
# request) held on the one-hop mesh-proxy, on nginx and on Envoy, in the same run. Prints
# the RSS each process gained per connection, and mesh-proxy's ratio to each.
#
#   bench/connections.sh [N]        # N connections per target, default 5000
#   BENCH_JSON=1 bench/connections.sh 1000   # one JSON line instead (bench/run.sh does this)
#
# Needs python3, curl and nginx (installed with apt-get when missing and run as root);
# Envoy as in bench/run.sh (envoy_bin in bench/lib.sh), configured the same way.
# Uses the dist build (cargo build --profile dist), like bench/run.sh; BENCH_PROFILE=release
# for a quicker build. Only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

N=${1:-5000}
BASE=${BENCH_PORT_BASE:-18300}
if ! command -v nginx >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
fi
for tool in nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
# Each held connection is a file descriptor here and one (or two) in the target.
ulimit -n $((N * 2 + 1000))
ENVOY_BIN=$(envoy_bin)

PROFILE=${BENCH_PROFILE:-dist}
cargo build --profile "$PROFILE" -q -p mesh-proxy -p mesh-registry -p mesh-bench
BIN=$(target_dir)/$PROFILE
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT

BACKEND=$BASE; REGISTRY=$((BASE + 1)); OUTBOUND=$((BASE + 2)); ADMIN=$((BASE + 3)); NGINX=$((BASE + 4))
ENVOY=$((BASE + 5)); ENVOY_ADMIN=$((BASE + 6))
"$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND" >>"$TMP/log" 2>&1 & PIDS+=($!)
"$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY" >>"$TMP/log" 2>&1 & PIDS+=($!)
wait_port "$BACKEND"; wait_port "$REGISTRY"
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1:$BACKEND\",\"ttl\":\"1h\"}"
"$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --outbound "127.0.0.1:$OUTBOUND" \
  --admin "127.0.0.1:$ADMIN" --threads 1 --max-connections $((N + 100)) >>"$TMP/log" 2>&1 & PIDS+=($!)
MESH_PID=$!
nginx_conf "$TMP/nginx" "$NGINX" "$BACKEND" "worker_rlimit_nofile $((N * 2 + 1000));"
sed -i "s/worker_connections 4096/worker_connections $((N * 2 + 100))/" "$TMP/nginx/nginx.conf"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' >>"$TMP/log" 2>&1 & PIDS+=($!)
envoy_conf "$TMP/envoy.yaml" "$ENVOY" "$BACKEND" "$ENVOY_ADMIN"
"$ENVOY_BIN" --config-path "$TMP/envoy.yaml" --concurrency 1 --disable-hot-restart --log-level warn \
  >>"$TMP/log" 2>&1 & PIDS+=($!)
ENVOY_PID=$!
wait_port "$OUTBOUND"; wait_port "$NGINX"; wait_port "$ENVOY"

rss_kb() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
# The nginx worker holds the connections.
nginx_worker() { pgrep -P "$(cat "$TMP/nginx/nginx.pid")" | head -1; }

# Opens N connections to PORT, one request on each, then holds them until stdin closes.
hold() {
  python3 - "$1" "$N" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(4096)
    held.append(s)
print("held", flush=True)
sys.stdin.read()
PY
}

measure() {
  local name=$1 port=$2 pid=$3 before after
  # Warm up: one request through, so pools and buffers exist before the baseline.
  curl -fsS -o /dev/null -H 'host: bench' "http://127.0.0.1:$port/"
  before=$(rss_kb "$pid")
  coproc HOLD { hold "$port"; }
  read -r _ <&"${HOLD[0]}"
  after=$(rss_kb "$pid")
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  echo "$name $before $after"
}

echo "holding $N idle keep-alive connections on each target" >&2
mesh=$(measure mesh-proxy "$OUTBOUND" "$MESH_PID")
nginx=$(measure nginx "$NGINX" "$(nginx_worker)")
envoy=$(measure envoy "$ENVOY" "$ENVOY_PID")
python3 - "$N" "${BENCH_JSON:-0}" "$mesh" "$nginx" "$envoy" <<'PY'
import json, sys
n, as_json = int(sys.argv[1]), sys.argv[2] == "1"
rows = [line.split() for line in sys.argv[3:]]
if as_json:
    print(json.dumps({"connections": n, "rss_kb": {name: {"before": int(b), "after": int(a)} for name, b, a in rows}}))
    sys.exit(0)
per = {}
print(f"{'target':<12} {'RSS before':>12} {'RSS with conns':>15} {'per connection':>15}")
for name, before, after in rows:
    before, after = int(before), int(after)
    per[name] = (after - before) * 1024 / n
    print(f"{name:<12} {before/1024:>9.1f} MB {after/1024:>12.1f} MB {per[name]/1024:>12.2f} KiB")
for other in ("nginx", "envoy"):
    print(f"mesh-proxy / {other} per connection: {per['mesh-proxy'] / per[other]:.2f}x")
PY
