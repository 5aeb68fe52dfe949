#!/usr/bin/env bash
# What hostile clients can make the registry hold, measured on a release binary:
#
#   1. relays: RELAYS parallel GETs of a sidecar admin page of PAGE bytes through the
#      registry (GET /v1/services/S/instances/I/admin/metrics), by clients that never
#      read the answer: the registry's peak RSS (VmHWM) while they hang on, its RSS once
#      they are gone, and what they were answered.
#   2. idle connections: IDLE sockets that send nothing, then one registration: whether
#      it is served and how soon, and how many file descriptors the registry holds.
#
#   bench/registry-bounds.sh [path/to/mesh-registry]    # default target/release/mesh-registry
#   RELAYS=3000 PAGE=1048576 IDLE=20000 REGISTRY_NOFILE=20000 bench/registry-bounds.sh
#
# Build the binary first (cargo build --release -p mesh-registry). The registry runs with
# an open-file limit of REGISTRY_NOFILE (default 20000, at most the hard limit); the idle
# sockets are held by processes of 5000 each.
# Needs python3, curl and ss. Only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

BIN=${1:-${CARGO_TARGET_DIR:-target}/release/mesh-registry}
RELAYS=${RELAYS:-3000}
PAGE=${PAGE:-1048576}
IDLE=${IDLE:-20000}
HOLD=${HOLD:-20}
REGISTRY_NOFILE=${REGISTRY_NOFILE:-20000}
BASE=${BENCH_PORT_BASE:-18400}
REGISTRY=$BASE; SIDECAR=$((BASE + 1))
[[ -x $BIN ]] || { echo "no registry binary at $BIN" >&2; exit 2; }
# As many sockets as the hard limit allows; the idle ones are spread over processes.
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT

rss() { awk -v key="$2:" '$1 == key {print $2}' "/proc/$1/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 2>/dev/null | wc -l; }

start_registry() {
  (ulimit -n "$REGISTRY_NOFILE"; exec "$BIN" --listen "127.0.0.1:$REGISTRY" "$@") >>"$TMP/registry.log" 2>&1 &
  REGISTRY_PID=$!
  PIDS+=("$REGISTRY_PID")
  wait_port "$REGISTRY"
}

stop_registry() {
  kill "$REGISTRY_PID"
  wait "$REGISTRY_PID" 2>/dev/null || true
}

# A sidecar admin port whose every page is PAGE bytes of text.
python3 - "$SIDECAR" "$PAGE" <<'PY' >"$TMP/sidecar.pids" 2>>"$TMP/sidecar.log" &
import asyncio, os, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
page = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % size + b"x" * size
async def answer(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(page)
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=4096, reuse_port=True)
    await server.serve_forever()
# Several processes on one port, so the sidecar keeps up with the registry; their ids
# go to stdout, for the script to stop them.
for _ in range(3):
    child = os.fork()
    if child == 0:
        break
    print(child, flush=True)
asyncio.run(main())
PY
PIDS+=($!)
wait_port "$SIDECAR"
until [[ $(wc -l <"$TMP/sidecar.pids") -ge 3 ]]; do sleep 0.1; done
mapfile -t -O "${#PIDS[@]}" PIDS <"$TMP/sidecar.pids"

# --- 1. relays to clients that do not read --------------------------------------------
start_registry
curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1" \
  -H 'content-type: application/json' \
  -d "{\"address\":\"127.0.0.1:$SIDECAR\",\"ttl\":\"1h\",\"metadata\":{\"admin\":\"127.0.0.1:$SIDECAR\"}}"
curl -fsS -o /dev/null "http://127.0.0.1:$REGISTRY/v1/services/bench/instances/b1/admin/metrics"
idle_rss=$(rss "$REGISTRY_PID" VmRSS)
echo "relays: $RELAYS clients GET a $PAGE-byte page through the registry and never read" >&2
python3 - "$REGISTRY" "$RELAYS" "$HOLD" "$REGISTRY_PID" <<'PY' >"$TMP/relays"
import socket, sys, time
port, n, hold, pid = (int(a) for a in sys.argv[1:])
request = b"GET /v1/services/bench/instances/b1/admin/metrics HTTP/1.1\r\nhost: bench\r\n\r\n"
clients = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(request)
    clients.append(s)
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
most = 0
deadline = time.time() + hold
while time.time() < deadline:
    most = max(most, rss())
    time.sleep(0.1)
# What they were answered, read only now: the first line of each answer.
answered = {}
for s in clients:
    s.settimeout(0.5)
    try:
        line = s.recv(64).split(b"\r\n")[0].decode(errors="replace") or "closed"
    except (socket.timeout, ConnectionError):
        line = "nothing"
    key = " ".join(line.split()[:2]) if line.startswith("HTTP/") else line
    answered[key] = answered.get(key, 0) + 1
    s.close()
print(most, ", ".join(f"{v} {k}" for k, v in sorted(answered.items())))
PY
answered=$(cut -d' ' -f2- "$TMP/relays")
sleep 5
peak=$(rss "$REGISTRY_PID" VmHWM)
after=$(rss "$REGISTRY_PID" VmRSS)
stop_registry

# --- 2. idle connections, then a registration ------------------------------------------
start_registry
echo "idle: $IDLE connections that send nothing, then one registration" >&2
IDLE_PIDS=()
for ((i = 0; i < IDLE; i += 5000)); do
  python3 - "$REGISTRY" "$((IDLE - i < 5000 ? IDLE - i : 5000))" <<'PY' >"$TMP/idle.$i" &
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
# In batches the listen backlog can take, as a patient attacker would.
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    held.append(s)
    if i % 250 == 249:
        time.sleep(0.1)
print("held", flush=True)
time.sleep(3600)
PY
  IDLE_PIDS+=($!)
  PIDS+=($!)
done
for ((i = 0; i < IDLE; i += 5000)); do
  until grep -q held "$TMP/idle.$i"; do sleep 0.2; done
done
# Connections refused a place in the listen backlog retry their SYN (after 1, 3, 7, 15 s):
# wait until no client is still connecting, or 90 s, noting the most descriptors the
# registry held meanwhile.
most_fds=0
for _ in $(seq 180); do
  now=$(fds "$REGISTRY_PID")
  ((now > most_fds)) && most_fds=$now
  [[ $(ss -Htn state syn-sent "( dport = :$REGISTRY )" | wc -l) == 0 ]] && break
  sleep 0.5
done
held_fds=$(fds "$REGISTRY_PID")
started=$(date +%s.%N)
if curl -fsS -o /dev/null --max-time 60 -X PUT "http://127.0.0.1:$REGISTRY/v1/services/web/instances/a" \
  -H 'content-type: application/json' -d '{"address":"10.0.0.1:80"}' 2>"$TMP/curl"; then
  registered="served after $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)") s"
else
  registered="not served: $(tr -d '\n' <"$TMP/curl")"
fi
after_fds=$(fds "$REGISTRY_PID")
idle_conn_rss=$(rss "$REGISTRY_PID" VmHWM)
kill "${IDLE_PIDS[@]}"
stop_registry

cat <<REPORT
registry: $BIN (open-file limit $REGISTRY_NOFILE)
relays ($RELAYS clients, $PAGE-byte page, not reading, held ${HOLD}s):
  RSS idle $((idle_rss / 1024)) MB, peak $((peak / 1024)) MB, after the clients left $((after / 1024)) MB
  answered: $answered
idle connections ($IDLE sending nothing):
  registry file descriptors: at most $most_fds, $held_fds once all had connected, $after_fds after the registration; peak RSS $((idle_conn_rss / 1024)) MB
  a registration meanwhile: $registered
REPORT
