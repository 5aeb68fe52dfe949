#!/usr/bin/env bash
# End-to-end test of compose.yaml, run by CI on a clean clone:
#
#   bash compose.test.sh          # KEEP_IMAGES=1 keeps the images it builds
#
# 1. builds a local Prometheus stand-in (no image can be pulled here: Debian's prometheus
#    binary in an empty image, passed as PROMETHEUS_IMAGE);
# 2. runs docker/up.sh under a project name of its own: docker/build.sh (the static
#    binaries, built once, and the images), up -d, the wait until every container is healthy;
# 3. loads the page, then keeps ~50 page loads a second going for 40 s while one
#    recommendations app container is killed: not one load may fail, and the registry must
#    stop listing the killed instance within lease + grace;
# 4. asks Prometheus what it saw (requests, retries or ejections, connections over mTLS,
#    every sidecar target up) and checks the Grafana dashboard's queries against it;
# 5. tears the stack down (also on failure) and checks nothing of it is left.
set -euo pipefail
cd "$(dirname "$0")"

# The run's names (project, image tag, logs), its traps and tools: compose.lib.sh, shared
# with the other compose test.
source compose.lib.sh
begin_run e2e

step "Prometheus stand-in image"
bash docker/prometheus-standin.sh "$PROMETHEUS_IMAGE" || fail "building $PROMETHEUS_IMAGE"

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
[[ $containers -eq 8 ]] || fail "expected 8 containers (registry, Prometheus, 3 sidecars, 3 apps), got $containers"

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
cargo run -q --release -p meshctl -- --registry "$registry" check || fail "meshctl check failed"

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
    if len(seen["sidecars"]) != 3 or any(h != "up" for _, h in seen["sidecars"]):
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
