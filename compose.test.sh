#!/usr/bin/env bash
# End-to-end test of compose.yaml, run by CI on a clean clone:
#
#   bash compose.test.sh          # KEEP_IMAGES=1 keeps the images it builds
#
# 1. builds a local Prometheus stand-in (no image can be pulled here: Debian's prometheus
#    binary in an empty image, passed as PROMETHEUS_IMAGE), and starts an OTLP/HTTP
#    receiver on the Docker host (oteltest's sink, $PYTHON) that the sidecars send their
#    spans to as host.docker.internal (MESH_TRACE_COLLECTOR, every call traced);
# 2. runs docker/up.sh under a project name of its own: docker/build.sh (the static
#    binaries, built once, and the images), up -d, the wait until every container is healthy;
# 3. loads the page; checks that each call is a JSON line in the sidecars' access logs
#    (`docker-compose logs`), that a page view is one trace across the marketplace's and a
#    recommendations sidecar (a page's own sampled `traceparent` followed), and that
#    `meshctl tap` through the registry shows calls as they happen; then keeps ~50 page
#    loads a second going for 40 s while one recommendations app container is killed: not
#    one load may fail, and the registry must stop listing the killed instance within
#    lease + grace;
# 4. uses the cache (Redis, opaque TCP) with redis-cli in the marketplace's network
#    namespace: SET/GET/PING through its sidecar; then holds blocked connections on both
#    instances and kills cache-1: the connections it held end (and the marketplace's
#    sidecar counts them closed), those at cache-2 stay open, new ones all reach cache-2,
#    right after the kill as once cache-1 is no longer listed;
# 5. asks Prometheus what it saw (requests, retries or ejections, connections over mTLS,
#    connections to the cache, every sidecar target up) and checks the Grafana
#    dashboard's queries against it;
# 6. tears the stack down (also on failure) and checks nothing of it is left.
set -euo pipefail
cd "$(dirname "$0")"

# The run's names (project, image tag, logs), its traps and tools: compose.lib.sh, shared
# with the other compose test.
source compose.lib.sh
begin_run e2e

step "Prometheus stand-in image"
bash docker/prometheus-standin.sh "$PROMETHEUS_IMAGE" || fail "building $PROMETHEUS_IMAGE"

# Processes this script starts beside the stack, ended however it exits (before
# compose.lib.sh's on_exit, which is given the script's status).
helpers=()
trap 'rc=$?; ((${#helpers[@]} == 0)) || kill "${helpers[@]}" 2>/dev/null; (exit "$rc"); on_exit' EXIT

# A real OTLP/HTTP receiver for the sidecars' spans: oteltest's sink, on the Docker host at
# the default bridge's gateway address (where host.docker.internal, compose.yaml's
# host-gateway, leads from the containers) and a port the system picks: the proxy tests'
# proxy/tests/python/otlp_sink.py. It prints `ready PORT`, then a line per span:
# `span SERVICE KIND TRACE_ID SPAN_ID PARENT_ID|- NAME`.
step "OTLP receiver on the Docker host (oteltest's sink)"
python=${PYTHON:-python3}
"$python" -c 'import oteltest' 2>/dev/null \
    || fail "$python has no oteltest: set PYTHON to the virtualenv of the README's test command"
# The daemon's configuration names that address, or (by default) leaves it to docker0's.
gateway=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
[[ -n $gateway ]] || gateway=$(ip -4 -o addr show docker0 2>/dev/null | awk '{sub("/.*", "", $4); print $4; exit}')
[[ -n $gateway ]] || fail "no address for Docker's default bridge (host-gateway): no docker0?"
spans="$logs/spans"
# A coprocess: the script holds its stdin open (it ends when that closes) and no child
# inherits it.
coproc sink {
    exec "$python" proxy/tests/python/otlp_sink.py --host "$gateway" --format spans \
        >"$spans" 2>"$logs/sink.err"
}
helpers+=("$sink_PID")
sink_listening() {
    grep -q '^ready ' "$spans" && return 0
    kill -0 "${helpers[0]}" 2>/dev/null || fail "the OTLP sink exited: $(cat "$logs/sink.err")"
    return 1
}
eventually 30 "the OTLP sink did not start" sink_listening
export MESH_TRACE_COLLECTOR="http://host.docker.internal:$(sed -n 's/^ready //p' "$spans")/v1/traces"
export MESH_TRACE_SAMPLE_RATIO=1
echo "listening on $gateway; the sidecars send to $MESH_TRACE_COLLECTOR"

export MARKETPLACE_PORT="$(port 5000)" REGISTRY_PORT="$(port 7700)" PROMETHEUS_PORT="$(port 9090)"
page="http://127.0.0.1:$MARKETPLACE_PORT/"
registry="http://127.0.0.1:$REGISTRY_PORT"
prometheus="http://127.0.0.1:$PROMETHEUS_PORT"

# docker/up.sh: docker/build.sh (static binaries once, the images), up -d, then the
# bounded wait until every container is healthy and Prometheus ready.
step "docker/up.sh (project $project)"
up_log="$logs/up.log"
COMPOSE_PROJECT_NAME="$project" bash docker/up.sh | tee "$up_log"
time_to_healthy=$(sed -n 's/^==> healthy \([0-9]*\) s after up -d$/\1/p' "$up_log")
containers=$("${compose[@]}" ps -q | wc -l)
[[ $containers -eq 13 ]] || fail "expected 13 containers (the one-shot registry-ca, registry, Prometheus, 5 sidecars, 5 apps), got $containers"

step "the page through the marketplace sidecar ($page)"
body=$(curl -fsS "$page") || fail "GET $page"
grep -q '<title>Online Books For You</title>' <<<"$body" || fail "no title in: $body"
books=$(grep -c '<li>' <<<"$body" || true)
[[ $books -eq 3 ]] || fail "expected 3 <li>, got $books in: $body"
echo "title \"Online Books For You\", $books books"

step "the sidecars seen from the host, through the registry (dashboard, meshctl)"
curl -fsS "$registry/ui/" | grep -q '<title>' || fail "no dashboard at $registry/ui/"
relayed=$(curl -fsS "$registry/v1/services/marketplace/instances/marketplace-1/admin/debug/endpoints") \
    || fail "the registry did not relay marketplace-1's /debug/endpoints"
grep -q '"recommendations"' <<<"$relayed" || fail "marketplace-1's sidecar does not follow recommendations: $relayed"
# The binary the local demo builds; `cargo run -p meshctl` alone would resolve other
# dependency features and recompile them.
meshctl="${CARGO_TARGET_DIR:-target}/release/meshctl"
[[ -x $meshctl ]] && "$meshctl" help tap >/dev/null 2>&1 || cargo build -q --release -p meshctl
"$meshctl" --registry "$registry" check || fail "meshctl check failed"

step "registry writes are bound to the sidecars' identities"
owners=$(curl -fsS "$registry/v1/services/recommendations?all=true" | python3 -c \
    'import json, sys; print(" ".join(sorted({i["owner"] for i in json.load(sys.stdin)["instances"]})))')
[[ $owners == "spiffe://mesh.local/service/recommendations" ]] \
    || fail "recommendations' instances should be owned by its certificate, not: $owners"
forged=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'content-type: application/json' \
    -d '{"address":"10.6.6.6:4143"}' "$registry/v1/services/recommendations/instances/recommendations-1")
[[ $forged == 401 ]] || fail "a write without credentials got $forged, not 401"
echo "instances owned by $owners; an anonymous PUT over recommendations-1: $forged"

step "every call a JSON line in docker-compose logs; a page view one trace across two sidecars"
PAGE="$page" SPANS="$spans" COMPOSE="${compose[*]}" python3 - <<'EOF'
"""Page loads, with and without a W3C traceparent, found in the sidecars' access logs
(their stdout, in docker-compose logs) and as spans at the OTLP sink."""
import json, os, secrets, subprocess, sys, time, urllib.request

page, spans_file, compose = os.environ["PAGE"], os.environ["SPANS"], os.environ["COMPOSE"].split()
BOUND = 30  # s; access-log lines are written in batches, spans sent at least once a second
RECOMMENDATIONS = ["recommendations-1-sidecar", "recommendations-2-sidecar"]
PAGE_SPAN = "00f067aa0ba902b7"

def load(traceparent=None):
    headers = {"traceparent": traceparent} if traceparent else {}
    with urllib.request.urlopen(urllib.request.Request(page, headers=headers), timeout=10) as answer:
        if answer.read().decode().count("<li>") != 3:
            sys.exit(f"GET {page}: not the page with 3 books")

def calls(*services):
    """The access-log lines of `services` in docker-compose logs: those that are JSON
    objects (the sidecars' own log lines, on stderr, start with a time)."""
    logs = subprocess.run(compose + ["logs", "--no-color", "--no-log-prefix", *services],
                          capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]

def call(direction, trace_id, services):
    """The successful call to recommendations in `trace_id` that `services` logged."""
    return next((c for c in calls(*services) if c["direction"] == direction
                 and c["service"] == "recommendations" and c.get("status") == 200
                 and c.get("grpc_status") == 0 and c.get("trace_id") == trace_id), None)

def spans(trace_id):
    with open(spans_file) as received:
        lines = [l.rstrip("\n").split(" ", 6) for l in received if l.startswith("span ")]
    return [dict(service=s, kind=int(k), span=i, parent=p.strip("-"), name=n)
            for _, s, k, t, i, p, n in lines if t == trace_id]

def whole(trace_id):
    """The marketplace's CLIENT span of `trace_id`, a recommendations SERVER span that is
    its child, and all of the trace's spans, once those two have arrived."""
    found = spans(trace_id)
    for client in (s for s in found if (s["service"], s["kind"]) == ("marketplace", 3)):
        for server in found:
            if (server["service"], server["kind"], server["parent"]) == ("recommendations", 2, client["span"]):
                return client, server, found
    return None

def until(what, check):
    deadline = time.monotonic() + BOUND
    while not (found := check()):
        if time.monotonic() > deadline:
            sys.exit(f"{what} (not within {BOUND} s)")
        time.sleep(0.5)
    return found

# A page view carrying a sampled trace context: the trace goes on through both sidecars.
parented = secrets.token_hex(16)
load(f"00-{parented}-{PAGE_SPAN}-01")
outbound = until("the marketplace sidecar's access log has no line for the page view",
                 lambda: call("outbound", parented, ["marketplace-sidecar"]))
inbound = until("no recommendations sidecar's access log has a line for the page view",
                lambda: call("inbound", parented, RECOMMENDATIONS))
print(f"  marketplace-sidecar:  {json.dumps(outbound)}")
print(f"  its callee's sidecar: {json.dumps(inbound)}")
client, server, _ = until(f"trace {parented} did not arrive from both sidecars", lambda: whole(parented))
if client["parent"] != PAGE_SPAN:
    sys.exit(f"the marketplace's span is not the page's child: {client}")
print(f"  trace {parented} (the page's): marketplace CLIENT {client['span']} (parent {PAGE_SPAN}) "
      f"-> recommendations SERVER {server['span']}")

# A page view without one: the marketplace's sidecar starts the trace (ratio 1). Its lines
# are written in the order calls end, so every earlier call is in the log by now.
before = {c.get("trace_id") for c in calls("marketplace-sidecar")}
load()
started = until("the marketplace sidecar's access log has no line for the second page view",
                lambda: next((c["trace_id"] for c in calls("marketplace-sidecar")
                              if c.get("trace_id") not in before), None))
until(f"no recommendations sidecar's access log has trace {started}",
      lambda: call("inbound", started, RECOMMENDATIONS))
client, server, found = until(f"trace {started} did not arrive from both sidecars", lambda: whole(started))
if client["parent"] or len(found) != 2:
    sys.exit(f"expected a root CLIENT span and its SERVER child in trace {started}: {found}")
print(f"  trace {started}: marketplace CLIENT {client['span']} ({client['name']}) "
      f"-> recommendations SERVER {server['span']}")
EOF

step "meshctl tap recommendations, through the registry"
tap="$logs/tap"
MESH_REGISTRY_TOKEN="${MESH_OPERATOR_TOKEN:-dev-only-operator-token-not-for-real-deployments}" \
    "$meshctl" --registry "$registry" -o json tap recommendations >"$tap" 2>"$logs/tap.err" &
helpers+=($!)
# Calls made before the taps are open do not show: load the page until one does.
tapped() {
    kill -0 "${helpers[-1]}" 2>/dev/null || fail "meshctl tap exited: $(cat "$logs/tap.err")"
    curl -fsS -o /dev/null "$page" || fail "GET $page"
    grep -q '"direction":"inbound"' "$tap"
}
eventually 30 "meshctl tap showed no call" tapped
kill "${helpers[-1]}"
unset 'helpers[-1]'
head -n 1 "$logs/tap.err"
python3 - "$tap" <<'EOF'
import json, sys
calls = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
wrong = [c for c in calls if (c["direction"], c["service"], c.get("status")) != ("inbound", "recommendations", 200)]
print(f"  calls tapped: {len(calls)}, the first: {json.dumps(calls[0])}")
sys.exit(f"calls that are not recommendations' answered calls: {wrong}" if wrong else None)
EOF

step "50 page loads/s for 40 s; recommendations-1 killed from 8 s on, while it takes traffic"
victim=$("${compose[@]}" ps -q recommendations-1)
PYTHONPATH="$PWD" PAGE="$page" REGISTRY="$registry" VICTIM="$victim" python3 - <<'EOF'
"""Steady page loads at a fixed rate while one recommendations app is killed."""
import collections, json, os, subprocess, sys, time, urllib.request
from compose_pageload import PageLoads

# The kill comes KILL_AT s in, or up to KILL_WINDOW s later (see kill()).
RATE, DURATION, KILL_AT, KILL_WINDOW = 50, 40.0, 8.0, 20.0
LEASE_PLUS_GRACE = 40.0  # registry defaults: 10 s lease + 30 s critical grace
registry, victim = os.environ["REGISTRY"], os.environ["VICTIM"]

loads = PageLoads(os.environ["PAGE"], RATE, DURATION)
results, t0 = loads.results, loads.t0
killed_at = None

def kill():
    global killed_at
    time.sleep(KILL_AT)
    # Kill the instance while it is taking traffic: the balancer favours whichever
    # instance has answered faster lately, often for seconds at a time, and a kill while
    # the other one is favoured would test nothing. Best during a run of calls to it;
    # failing that, right after it served one.
    started = time.monotonic()
    while time.monotonic() - started < KILL_WINDOW:
        with loads.lock:
            recent = [s for _, s, _ in results[-3:]]
        run = 3 if time.monotonic() - started < KILL_WINDOW / 2 else 1
        if len(recent) >= run and all(s == "recommendations-1" for s in recent[-run:]):
            break
        time.sleep(0.02)
    killed_at = time.monotonic() - t0
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    print(f"  {killed_at:5.1f} s  docker kill recommendations-1")

def listing(all_instances=False):
    url = f"{registry}/v1/services/recommendations" + ("?all=true" if all_instances else "")
    with urllib.request.urlopen(url, timeout=5) as answer:
        return {i["id"]: i["status"] for i in json.load(answer)["instances"]}

registry_seen = {}
def watch_registry():
    while killed_at is None:
        time.sleep(0.05)
    while time.monotonic() - t0 - killed_at < LEASE_PLUS_GRACE:
        now = time.monotonic() - t0 - killed_at
        if "critical" not in registry_seen and listing(True).get("recommendations-1") == "critical":
            registry_seen["critical"] = now
        if "gone" not in registry_seen and "recommendations-1" not in listing():
            registry_seen["gone"] = now
            return
        time.sleep(0.2)

elapsed = loads.run(kill, watch_registry)

before = collections.Counter(s for t, s, _ in results if t < killed_at)
after = collections.Counter(s for t, s, _ in results if t >= killed_at + 1)
loads.print_rate(elapsed)
print(f"  served before the kill: {dict(before)}; from 1 s after it: {dict(after)}")
for what, at in sorted(registry_seen.items(), key=lambda kv: kv[1]):
    print(f"  registry: recommendations-1 {'critical' if what == 'critical' else 'no longer listed as passing'} {at:.1f} s after the kill")
failed = loads.print_failures()
problems = []
if failed:
    problems.append(f"{len(failed)} page loads failed")
if "gone" not in registry_seen:
    problems.append(f"the registry still lists recommendations-1 as passing {LEASE_PLUS_GRACE:.0f} s after the kill")
if after.get("recommendations-1"):
    problems.append("recommendations-1 served pages after it was killed")
sys.exit("; ".join(problems) or None)
EOF
state=$(docker inspect -f '{{.State.Status}} (restarts: {{.RestartCount}})' "$victim")
[[ $state == exited* ]] || fail "the killed container is $state: the restart policy brought it back"
echo "killed container: $state"

step "the cache through the marketplace's sidecar: Redis as opaque TCP, cache-1 killed"
cache_started=$SECONDS
cache_image="mesh/cache:$MESH_TAG"
cache1=$("${compose[@]}" ps -q cache-1)
cache2=$("${compose[@]}" ps -q cache-2)
marketplace_admin="$registry/v1/services/marketplace/instances/marketplace-1/admin"
# Clients run redis-cli in the marketplace's network namespace, where 127.0.0.1:6379 is its
# sidecar's upstream listener for cache. Without --no-healthcheck the image's own check
# would dial that listener every 2 s, adding connections of its own.
client=(docker run --label "$client_label" --no-healthcheck
    --network "container:$("${compose[@]}" ps -q marketplace-sidecar)")
cli=(/redis-cli -h 127.0.0.1 -p 6379)

# The marketplace sidecar's samples of metric $1 for its connections to cache, summed over
# the reasons named after it (all, if none).
spliced() {
    curl -fsS "$marketplace_admin/metrics" | python3 -c '
import re, sys
name, reasons = sys.argv[1], sys.argv[2:]
total = 0.0
for line in sys.stdin:
    m = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line.strip())
    if m and m[1] == name:
        labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m[2]))
        if (labels.get("direction"), labels.get("service")) == ("outbound", "cache") \
                and (not reasons or labels.get("reason") in reasons):
            total += float(m[3])
print(int(total))' "$@"
}
# The cache instances the marketplace's sidecar routes to.
routed() {
    curl -fsS "$marketplace_admin/debug/endpoints" | python3 -c '
import json, sys
print(" ".join(sorted(e["instance"] for d in json.load(sys.stdin) if d["service"] == "cache" for e in d["endpoints"])))'
}
# The databases whose BLPOP an instance is blocked in: each held connection selects a
# database of its own (-n), so CLIENT LIST on the instance tells which ones reached it.
blocked() {
    docker exec "$1" /redis-cli -p 6379 CLIENT LIST |
        sed -n 's/.* db=\([0-9]*\) .* cmd=blpop .*/\1/p' | sort -n | xargs
}
all_blocked() { (($(wc -w <<<"$(blocked "$cache1") $(blocked "$cache2")") == $1)); }
exited() { [[ $(docker inspect -f '{{.State.Status}}' "$1") == exited ]]; }
counted_closed() { (($(spliced mesh_spliced_closed_total closed reset) - closed_before >= $1)); }
routes_to() { [[ $(routed) == "$1" ]]; }

# One connection: the commands reach one instance and its answers come back.
answers=$(printf 'SET mesh-e2e through-the-mesh\nGET mesh-e2e\nPING\n' |
    "${client[@]}" --rm -i "$cache_image" "${cli[@]}") || fail "redis-cli through the mesh: $answers"
[[ $answers == $'OK\nthrough-the-mesh\nPONG' ]] || fail "SET, GET, PING answered: $answers"
holders=0
for id in "$cache1" "$cache2"; do
    if [[ $(docker exec "$id" /redis-cli -p 6379 GET mesh-e2e) == through-the-mesh ]]; then
        holders=$((holders + 1))
    fi
done
[[ $holders -eq 1 ]] || fail "the key is on $holders cache instances, not on one"
echo "SET, GET, PING over one connection: OK, through-the-mesh, PONG; the key is on one instance"

# Held connections (BLPOP on a key nobody pushes to), one at a time until each instance
# holds one: p2c sends a new connection to the endpoint with fewer open, weighed by its
# connect latency, so the first two usually split. Kept stopped, not removed, once they
# exit: their status tells how the connection ended.
held=()
for db in 1 2 3 4 5 6; do
    held+=("$("${client[@]}" -d "$cache_image" "${cli[@]}" -n "$db" BLPOP mesh-e2e-held 0)")
    eventually 10 "held connection $db blocked at an instance" all_blocked "$db"
    on1=$(blocked "$cache1") on2=$(blocked "$cache2")
    if [[ -n $on1 && -n $on2 ]]; then
        break
    fi
done
[[ -n $on1 && -n $on2 ]] || fail "$db held connections all went to one instance (cache-1: [$on1], cache-2: [$on2])"
echo "held connections (by database): cache-1 [$on1], cache-2 [$on2]"

closed_before=$(spliced mesh_spliced_closed_total closed reset)
reset_before=$(spliced mesh_spliced_closed_total reset)
docker kill "$cache1" >/dev/null
for db in $on1; do
    eventually 10 "the client held at cache-1 (database $db) still runs after the kill" exited "${held[db - 1]}"
    status=$(docker inspect -f '{{.State.ExitCode}}' "${held[db - 1]}")
    said=$(docker logs "${held[db - 1]}" 2>&1 | tail -n 1)
    [[ $status -ne 0 ]] || fail "the client held at cache-1 (database $db) exited 0: $said"
    echo "  held at cache-1 (database $db): its client exited $status: $said"
done
eventually 10 "the marketplace's sidecar did not count the $(wc -w <<<"$on1") closed connection(s)" \
    counted_closed "$(wc -w <<<"$on1")"
reset=$(($(spliced mesh_spliced_closed_total reset) - reset_before))
closed=$(($(spliced mesh_spliced_closed_total closed reset) - closed_before - reset))
echo "  counted by the marketplace's sidecar since the kill: reason=\"reset\" +$reset, reason=\"closed\" +$closed"
for db in $on2; do
    if exited "${held[db - 1]}"; then
        fail "the client held at cache-2 (database $db) ended with cache-1's kill"
    fi
done
[[ $(blocked "$cache2") == "$on2" ]] || fail "cache-2 holds [$(blocked "$cache2")], not [$on2], after cache-1's kill"
open=$(spliced mesh_spliced_open_connections)
[[ $open -eq $(wc -w <<<"$on2") ]] || fail "mesh_spliced_open_connections to cache is $open, not $(wc -w <<<"$on2")"
echo "  held at cache-2 [$on2]: still blocked there; open connections to cache: $open"

# New connections at once, most likely before cache-1's sidecar has reported its app: that
# sidecar tells the marketplace's (over mTLS) that it cannot reach Redis, which then tries
# cache-2; the client never sees a connection closed under it.
survivor=${held[${on2%% *} - 1]}
for i in 1 2 3 4 5 6 7 8 9 10; do
    pong=$(docker exec "$survivor" "${cli[@]}" PING 2>&1) || true
    [[ $pong == PONG ]] || fail "new connection $i right after the kill answered: $pong"
done
echo "  10 new connections right after the kill (routed to: $(routed)): PONG each"

# New connections once the sidecar routes to cache-2 alone (cache-1's sidecar reports its
# app critical within a health check, 2 s; the registry's lease + grace is the bound).
eventually 40 "the marketplace's sidecar still routes to cache-1" routes_to cache-2
for i in 1 2 3 4 5 6 7 8 9 10; do
    pong=$(docker exec "$survivor" "${cli[@]}" PING 2>&1) || true
    [[ $pong == PONG ]] || fail "new connection $i after the kill answered: $pong"
done
[[ $(blocked "$cache2") == "$on2" ]] || fail "cache-2 holds [$(blocked "$cache2")], not [$on2], after the new connections"
echo "  10 new connections after the kill: PONG each; routed to: $(routed)"
echo "cache stage: $((SECONDS - cache_started)) s"

step "what Prometheus saw ($prometheus)"
PROMETHEUS="$prometheus" python3 - <<'EOF'
"""Polls Prometheus until its data shows the traffic, the kill's effects and healthy
targets (a scrape every 5 s; at most 30 s), then asserts."""
import json, os, sys, time, urllib.parse, urllib.request

prometheus = os.environ["PROMETHEUS"]

def api(path, **params):
    with urllib.request.urlopen(f"{prometheus}{path}?{urllib.parse.urlencode(params)}", timeout=10) as a:
        return json.load(a)["data"]

def scalar(query):
    result = api("/api/v1/query", query=query)["result"]
    return float(result[0]["value"][1]) if result else 0.0

def observe():
    targets = api("/api/v1/targets", state="active")["activeTargets"]
    sidecars = [t for t in targets if t["labels"]["job"] == "mesh-sidecars"]
    return {
        "requests": scalar('sum(mesh_requests_total{direction="outbound", service="recommendations"})'),
        "retries": scalar("sum(mesh_retries_total)"),
        "ejections": scalar("sum(mesh_endpoint_ejections_total)"),
        # Calls that reached recommendations-1's sidecar after its app died and failed there.
        "dead": scalar('sum(mesh_responses_total{direction="inbound", instance="recommendations-1", classification!="success"})'),
        "tls": scalar('sum(mesh_inbound_connections_total{app="recommendations", tls="tls"})'),
        # The marketplace's connections carried to the cache, and the cache sidecars' side.
        "cache": scalar('sum(mesh_spliced_connections_total{direction="outbound", service="cache"})'),
        "cache_tls": scalar('sum(mesh_inbound_connections_total{app="cache", tls="tls"})'),
        "plaintext": scalar('sum(mesh_inbound_connections_total{tls="plaintext"})'),
        "sidecars": sorted((t["labels"].get("instance", "?"), t["health"]) for t in sidecars),
        "registry": [t["health"] for t in targets if t["labels"]["job"] == "mesh-registry"],
    }

def problems(seen):
    found = []
    if seen["requests"] <= 0:
        found.append("no outbound request to recommendations recorded")
    # Whether a call reaches the dead instance before the registry drops it (about 1 s)
    # is up to the balancer; every call that did must have been retried elsewhere.
    if seen["dead"] > 0 and seen["retries"] + seen["ejections"] <= 0:
        found.append(f"{seen['dead']:.0f} calls failed at recommendations-1, yet neither retries nor ejections recorded")
    if seen["tls"] <= 0 or seen["plaintext"] > 0:
        found.append("calls to recommendations did not all arrive over mTLS")
    if seen["cache"] <= 0 or seen["cache_tls"] <= 0:
        found.append("no connection to the cache recorded, carried or over mTLS")
    if len(seen["sidecars"]) != 5 or any(h != "up" for _, h in seen["sidecars"]):
        found.append(f"sidecar targets not all up: {seen['sidecars']}")
    if seen["registry"] != ["up"]:
        found.append(f"registry target: {seen['registry']}")
    return found

deadline = time.monotonic() + 30
while True:
    seen = observe()
    if not problems(seen) or time.monotonic() > deadline:
        break
    time.sleep(1)
print(f"  mesh_requests_total outbound to recommendations: {seen['requests']:.0f}")
print(f"  calls failed at the dead instance's sidecar: {seen['dead']:.0f}; mesh_retries_total: {seen['retries']:.0f}, mesh_endpoint_ejections_total: {seen['ejections']:.0f}")
print(f"  inbound connections to recommendations over mTLS: {seen['tls']:.0f}, plaintext anywhere: {seen['plaintext']:.0f}")
print(f"  connections to the cache carried by the marketplace's sidecar: {seen['cache']:.0f}; taken by the cache sidecars over mTLS: {seen['cache_tls']:.0f}")
print(f"  sidecar targets (from the registry): {', '.join(f'{i} {h}' for i, h in seen['sidecars'])}")
print(f"  registry target: {', '.join(seen['registry'])}")
sys.exit("; ".join(problems(seen)) or None)
EOF

step "Grafana dashboard queries against the live metrics"
python3 observability/check-dashboard.py --prometheus "$prometheus"

step "down -v"
teardown
printf '\n==> compose end-to-end passed in %d s (healthy %d s after up -d)\n' \
    $((SECONDS - started)) "$time_to_healthy"
