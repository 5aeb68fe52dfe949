#!/usr/bin/env bash
# End-to-end test of compose.ha.yaml, the registry on etcd (two replicas, three etcd
# members), run by CI after compose.test.sh:
#
#   bash compose.ha.test.sh          # KEEP_IMAGES=1 keeps the images it builds
#
# 1. builds the images (docker/build.sh: the static binaries, built once, and etcd's) and
#    the Prometheus stand-in, and checks that the registry has the etcd flags;
# 2. starts compose.yaml + compose.ha.yaml with docker/up.sh under a project name of its
#    own and waits until every container is healthy; checks the etcd cluster (3 members)
#    and that both replicas list the same instances;
# 3. keeps ~50 page loads a second going for 40 s while registry-1 is killed (SIGKILL, at
#    8 s) and etcd member etcd-2 is stopped (at 20 s): not one load may fail, and the
#    sidecars must move to registry-2 (seen in its metrics: heartbeats, parked watches);
# 4. afterwards: registry-2 lists both recommendations instances as passing (their
#    heartbeats reached it), a write through registry-2 works with etcd-2 gone, and
#    Prometheus still has every sidecar target up (discovered through registry-2);
# 5. stops etcd-3 too, so etcd loses quorum: registry-2 answers reads from its last state
#    with `X-Mesh-Stale: true`, refuses a write with 503 naming etcd, and the page keeps
#    loading;
# 6. starts etcd-3 and registry-1 again: both replicas ready, and what one writes the
#    other lists;
# 7. tears the stack down (also on failure) and checks nothing of it is left.
set -euo pipefail
cd "$(dirname "$0")"

# The run's names (project, image tag, logs), its traps and tools: compose.lib.sh, shared
# with the other compose test.
source compose.lib.sh
begin_run e2e-ha compose.yaml compose.ha.yaml
# The operator token compose.yaml gives the registry: the test's own writes need it, as
# sidecars write with their certificates on the TLS listener.
operator="authorization: Bearer ${MESH_OPERATOR_TOKEN:-dev-only-operator-token-not-for-real-deployments}"

# Seconds since an $EPOCHREALTIME, with one decimal; whether fewer than $2 have passed.
since() { LC_ALL=C awk -v t="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - t }'; }
within() { LC_ALL=C awk -v t="$1" -v now="$EPOCHREALTIME" -v limit="$2" 'BEGIN { exit !(now - t < limit) }'; }

step "images (docker/build.sh --etcd) and the Prometheus stand-in"
bash docker/build.sh --etcd
bash docker/prometheus-standin.sh "$PROMETHEUS_IMAGE" || fail "building $PROMETHEUS_IMAGE"
# A registry without etcd support would only show up as replicas that never get healthy.
help=$(docker run --rm "mesh/registry:$MESH_TAG" --help)
grep -q -- '--etcd-endpoints' <<<"$help" || fail "mesh/registry:$MESH_TAG has no --etcd-endpoints flag"

export MARKETPLACE_PORT="$(port 5000)" REGISTRY_PORT="$(port 7700)" REGISTRY_2_PORT="$(port 7701)"
export PROMETHEUS_PORT="$(port 9090)"
page="http://127.0.0.1:$MARKETPLACE_PORT/"
registry1="http://127.0.0.1:$REGISTRY_PORT"
registry2="http://127.0.0.1:$REGISTRY_2_PORT"
prometheus="http://127.0.0.1:$PROMETHEUS_PORT"

step "docker/up.sh -f compose.ha.yaml (project $project)"
up_log="$logs/up.log"
COMPOSE_PROJECT_NAME="$project" bash docker/up.sh --no-build -f compose.ha.yaml | tee "$up_log"
time_to_healthy=$(sed -n 's/^==> healthy \([0-9]*\) s after up -d$/\1/p' "$up_log")
containers=$("${compose[@]}" ps -q | wc -l)
[[ $containers -eq 17 ]] ||
    fail "expected 17 containers (3 etcd, registry-ca, 2 registries, Prometheus, 5 sidecars, 5 apps), got $containers"
[[ -z $("${compose[@]}" ps -q registry) ]] || fail "compose.yaml's single registry is running beside the replicas"

step "the etcd cluster and the two replicas"
etcd1=$("${compose[@]}" ps -q etcd-1)
docker exec "$etcd1" /etcdctl endpoint health --cluster ||
    fail "the etcd cluster is not healthy"
members=$(docker exec "$etcd1" /etcdctl member list | grep -c ', started, ' || true)
[[ $members -eq 3 ]] || fail "expected 3 started etcd members, got $members"
for r in "$registry1" "$registry2"; do
    ready=$(curl -fsS "$r/readyz") || fail "GET $r/readyz"
    grep -q '"status":"ready"' <<<"$ready" || fail "$r/readyz: $ready"
done
ids() { curl -fsS "$1/v1/services/recommendations" | python3 -c 'import json,sys; print(" ".join(sorted(i["id"] for i in json.load(sys.stdin)["instances"])))'; }
listed1=$(ids "$registry1") && listed2=$(ids "$registry2") || fail "GET /v1/services/recommendations"
[[ $listed1 == "recommendations-1 recommendations-2" && $listed2 == "$listed1" ]] ||
    fail "the replicas list different instances: registry-1 [$listed1], registry-2 [$listed2]"
echo "3 etcd members started; both replicas ready, both list: $listed2"
body=$(curl -fsS "$page") || fail "GET $page"
grep -q '<title>Online Books For You</title>' <<<"$body" || fail "no title in: $body"
echo "the page loads"

step "50 page loads/s for 40 s; registry-1 killed at 8 s, etcd-2 stopped at 20 s"
PYTHONPATH="$PWD" PAGE="$page" REGISTRY2="$registry2" \
    REGISTRY1_ID="$("${compose[@]}" ps -q registry-1)" ETCD2_ID="$("${compose[@]}" ps -q etcd-2)" \
    python3 - <<'EOF'
"""Steady page loads at a fixed rate while a registry replica dies and an etcd member stops;
watches registry-2's own counters to see when the sidecars moved to it."""
import collections, json, os, re, subprocess, sys, time, urllib.request
from compose_pageload import PageLoads

RATE, DURATION, KILL_AT, STOP_ETCD_AT = 50, 40.0, 8.0, 20.0
registry2 = os.environ["REGISTRY2"]

loads = PageLoads(os.environ["PAGE"], RATE, DURATION)
t0 = loads.t0
events = {}  # what happened -> seconds since start
samples = []  # (seconds since start, {route: answered requests}, {route: 200s}, parked watches) from registry-2
problems = []

def faults():
    time.sleep(KILL_AT)
    events["kill"] = time.monotonic() - t0
    subprocess.run(["docker", "kill", os.environ["REGISTRY1_ID"]], check=True, capture_output=True)
    print(f"  {events['kill']:5.1f} s  docker kill registry-1")
    time.sleep(max(0.0, t0 + STOP_ETCD_AT - time.monotonic()))
    events["etcd"] = time.monotonic() - t0
    subprocess.run(["docker", "stop", os.environ["ETCD2_ID"]], check=True, capture_output=True)
    print(f"  {events['etcd']:5.1f} s  docker stop etcd-2 (stopped {time.monotonic() - t0 - events['etcd']:.1f} s later)")

METRIC = re.compile(r'^mesh_registry_http_requests_total\{(.*)\} (\S+)$')

def counters():
    """registry-2's answers so far, by route: all of them, and those with code 200; and the
    blocking queries (the sidecars' watches) parked there now."""
    with urllib.request.urlopen(f"{registry2}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    answered, ok, watchers = collections.Counter(), collections.Counter(), 0.0
    for line in text.splitlines():
        if line.startswith("mesh_registry_watchers "):
            watchers = float(line.split()[1])
        m = METRIC.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            answered[labels.get("route")] += float(m.group(2))
            if labels.get("code") == "200":
                ok[labels.get("route")] += float(m.group(2))
    return answered, ok, watchers

def watch_registry2():
    """Samples registry-2's counters, and checks that it lists both instances throughout."""
    while time.monotonic() - t0 < DURATION:
        now = time.monotonic() - t0
        try:
            samples.append((now, *counters()))
            # GET /v1/services (route list_services), so that these reads stay out of the
            # counts of the sidecars' watches (get_service).
            with urllib.request.urlopen(f"{registry2}/v1/services", timeout=5) as a:
                services = {s["name"]: s for s in json.load(a)["services"]}
            passing = services.get("recommendations", {}).get("passing")
            if passing != 2 and "listing" not in events:
                events["listing"] = now
                problems.append(f"registry-2 listed {passing} recommendations instances as passing at {now:.1f} s")
        except Exception as error:
            problems.append(f"registry-2 did not answer at {now:.1f} s: {error}")
        time.sleep(0.25)

elapsed = loads.run(faults, watch_registry2)

def at(t, which, route):
    """registry-2's count for `route` in the last sample at or before t (which: 1 all
    answers, 2 those with code 200)."""
    before = [s for s in samples if s[0] <= t]
    return before[-1][which][route] if before else 0

def first_rise(route, since):
    """Seconds after `since` at which registry-2's count for `route` first rose, or None."""
    base = at(since, 1, route)
    return next((t - since for t, answered, _, _ in samples if t > since and answered[route] > base), None)

def first_watch(since):
    """Seconds after `since` at which more watches were parked at registry-2 than then."""
    base = max([s[3] for s in samples if s[0] <= since] or [0])
    return next((t - since for t, _, _, parked in samples if t > since and parked > base), None)

def count(route, start, end, which=1):
    return at(end, which, route) - at(start, which, route)

kill, etcd = events["kill"], events["etcd"]
loads.print_rate(elapsed)
print(f"  registry-2 before the kill ({kill:.0f} s): {count('heartbeat', 0, kill):.0f} heartbeats, "
      f"{max(s[3] for s in samples if s[0] <= kill):.0f} watches parked at once")
hb, watch = first_rise("heartbeat", kill), first_watch(kill)
print(f"  registry-2 after the kill: first heartbeat {hb if hb is None else f'{hb:.1f} s'} after it, "
      f"first watch parked {watch if watch is None else f'{watch:.1f} s'} after it; "
      f"{count('heartbeat', kill, etcd):.0f} heartbeats until etcd-2 stopped")
after_etcd = count("heartbeat", etcd, elapsed, which=2)
print(f"  registry-2 after etcd-2 stopped: {after_etcd:.0f} heartbeats answered 200")
failed = loads.print_failures()
if failed:
    problems.append(f"{len(failed)} page loads failed")
if hb is None:
    problems.append("no heartbeat reached registry-2 after registry-1 was killed")
if after_etcd <= 0:
    problems.append("no heartbeat succeeded at registry-2 after etcd-2 stopped")
sys.exit("; ".join(problems) or None)
EOF
state=$(docker inspect -f '{{.State.Status}}' "$("${compose[@]}" ps -q registry-1)")
[[ $state == exited ]] || fail "the killed registry-1 is $state: the restart policy brought it back"

step "registry-2 with registry-1 and etcd-2 gone"
listing=$(curl -fsS -D "$logs/headers" "$registry2/v1/services/recommendations?all=true") ||
    fail "GET $registry2/v1/services/recommendations"
passing=$(python3 -c 'import json,sys; print(" ".join(sorted(i["id"] for i in json.load(sys.stdin)["instances"] if i["status"] == "passing")))' <<<"$listing")
[[ $passing == "recommendations-1 recommendations-2" ]] ||
    fail "registry-2 lists as passing [$passing], not both instances: $listing"
! grep -qi '^x-mesh-stale: *true' "$logs/headers" || fail "registry-2 answers stale with 2 of 3 etcd members up"
echo "registry-2 lists both instances, passing (heartbeats reach it), not stale"
instance="$registry2/v1/services/ha-check/instances/ha-check-1"
code=$(curl -sS -o "$logs/put" -w '%{http_code}' -X PUT -H "$operator" -H 'content-type: application/json' \
    -d '{"address":"ha-check:1"}' "$instance")
[[ $code == 200 ]] || fail "PUT through registry-2 without etcd-2: $code $(cat "$logs/put")"
curl -fsS "$registry2/v1/services/ha-check" | grep -q '"ha-check-1"' || fail "registry-2 does not list what it just registered"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE -H "$operator" "$instance")
[[ $code == 204 ]] || fail "DELETE through registry-2 without etcd-2: $code"
echo "write through registry-2 with etcd-2 stopped: PUT 200, listed, DELETE 204"

step "what Prometheus sees ($prometheus)"
PROMETHEUS="$prometheus" python3 - <<'EOF'
"""Every sidecar target still up, discovered through registry-2 now; registry-2's target up
(a scrape and a discovery every 5 s; waits at most 30 s)."""
import json, os, sys, time, urllib.request

def targets():
    url = f"{os.environ['PROMETHEUS']}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=10) as a:
        active = json.load(a)["data"]["activeTargets"]
    sidecars = sorted((t["labels"].get("instance", "?"), t["health"]) for t in active if t["labels"]["job"] == "mesh-sidecars")
    registries = sorted((t["labels"]["instance"], t["health"]) for t in active if t["labels"]["job"] == "mesh-registry")
    return sidecars, registries

deadline = time.monotonic() + 30
while True:
    sidecars, registries = targets()
    good = len(sidecars) == 5 and all(h == "up" for _, h in sidecars) and ("registry-2:7700", "up") in registries
    if good or time.monotonic() > deadline:
        break
    time.sleep(1)
print(f"  sidecar targets: {', '.join(f'{i} {h}' for i, h in sidecars)}")
print(f"  registry targets: {', '.join(f'{i} {h}' for i, h in registries)}")
sys.exit(None if good else "not every sidecar target up, or registry-2's target not up")
EOF

step "etcd loses quorum (etcd-3 stopped too, only etcd-1 left)"
stopping=$EPOCHREALTIME
docker stop "$("${compose[@]}" ps -q etcd-3)" >/dev/null
stop_took=$(since "$stopping")
# The replica notices within its next quorum probe (every second).
while :; do
    curl -sS -D "$logs/headers" -o "$logs/listing" "$registry2/v1/services/recommendations?all=true" || true
    grep -qi '^x-mesh-stale: *true' "$logs/headers" && break
    within "$stopping" 30 || fail "registry-2 answers no X-Mesh-Stale: true 30 s after quorum was lost"
    sleep 0.2
done
time_to_stale=$(since "$stopping")
instances=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["instances"]))' "$logs/listing")
[[ $instances -eq 2 ]] || fail "the stale listing has $instances instances: $(cat "$logs/listing")"
echo "reads: X-Mesh-Stale: true $time_to_stale s after docker stop etcd-3 began (the stop took $stop_took s), both instances still listed"
ready=$(curl -sS "$registry2/readyz")
grep -q '"status":"stale"' <<<"$ready" || fail "registry-2's /readyz while etcd has no quorum: $ready"
echo "registry-2 /readyz: $ready"
code=$(curl -sS -m 30 -o "$logs/put" -w '%{http_code}' -X PUT -H "$operator" -H 'content-type: application/json' \
    -d '{"address":"ha-check:1"}' "$instance") || true
[[ $code == 503 ]] && grep -qi etcd "$logs/put" ||
    fail "a write without quorum answered $code, not 503 naming etcd: $(cat "$logs/put")"
echo "write: 503 $(head -c 200 "$logs/put")"
failed=0
for _ in $(seq 100); do
    curl -fsS -o /dev/null -m 10 "$page" || failed=$((failed + 1))
    sleep 0.05
done
echo "100 page loads without quorum: $failed failed"
((failed == 0)) || fail "$failed of 100 page loads failed while etcd had no quorum"

step "recovery: etcd-3 and registry-1 started again"
recovering=$EPOCHREALTIME
"${compose[@]}" start etcd-3 registry-1 >/dev/null 2>&1
ready() { local answer; answer=$(curl -fsS "$1/readyz" 2>/dev/null) && grep -q '"status":"ready"' <<<"$answer"; }
until ready "$registry2" && ready "$registry1"; do
    within "$recovering" 60 || fail "the replicas are not both ready 60 s after etcd-3 and registry-1 started"
    sleep 0.2
done
echo "both replicas ready (not stale) $(since "$recovering") s after docker-compose start etcd-3 registry-1 began"
# One catalog: what one replica writes, the other lists.
code=$(curl -sS -o "$logs/put" -w '%{http_code}' -X PUT -H "$operator" -H 'content-type: application/json' \
    -d '{"address":"ha-check:1"}' "$registry1/v1/services/ha-check/instances/ha-check-1")
[[ $code == 200 ]] || fail "PUT through registry-1 after recovery: $code $(cat "$logs/put")"
curl -fsS "$registry2/v1/services/ha-check" | grep -q '"ha-check-1"' ||
    fail "registry-2 does not list what registry-1 registered"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE -H "$operator" "$instance")
[[ $code == 204 ]] || fail "DELETE through registry-2 after recovery: $code"
listed1=$(ids "$registry1") || fail "GET $registry1/v1/services/recommendations"
[[ $listed1 == "recommendations-1 recommendations-2" ]] || fail "the restarted registry-1 lists [$listed1]"
echo "registered through registry-1, listed by registry-2, deleted through registry-2; registry-1 lists: $listed1"

step "down -v"
teardown
printf '\n==> compose end-to-end with the registry on etcd passed in %d s (healthy %d s after up -d)\n' \
    $((SECONDS - started)) "$time_to_healthy"
