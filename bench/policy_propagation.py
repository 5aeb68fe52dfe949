"""Times policy and instance changes to the sidecars following them (see bench/policy.sh).

    python3 bench/policy_propagation.py REGISTRY_URL CHANGES OUTBOUND:ADMIN...
"""

import json
import sys
import threading
import time
import urllib.request

POLL = 0.002  # seconds between two reads of a sidecar's admin page
BOUND = 30.0  # a change not seen by then is a failure of the run


def request(method, url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as answer:
        return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()


def page(admin, path):
    return json.loads(request("GET", f"http://127.0.0.1:{admin}{path}")[2])


def policy_index(admin):
    for d in page(admin, "/debug/policy")["destinations"]:
        if d["service"] == "recs":
            return d["index"]
    return 0


def lists(admin, instance):
    for d in page(admin, "/debug/endpoints"):
        if d["service"] == "recs":
            return any(e.get("instance") == instance for e in d["endpoints"])
    return False


def until_all(admins, seen, started):
    """Seconds from `started` until `seen(admin)` held, for each sidecar."""
    delays = [None] * len(admins)

    def watch(i, admin):
        while time.monotonic() - started < BOUND:
            if seen(admin):
                delays[i] = time.monotonic() - started
                return
            time.sleep(POLL)

    threads = [threading.Thread(target=watch, args=(i, a)) for i, a in enumerate(admins)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if None in delays:
        sys.exit(f"a change did not reach every sidecar within {BOUND} s: {delays}")
    return delays


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    registry, changes, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    outbounds = [p.split(":")[0] for p in pairs]
    admins = [p.split(":")[1] for p in pairs]
    # Each caller calls recs once, so it follows its endpoints and routes from then on.
    for out in outbounds:
        request("GET", f"http://127.0.0.1:{out}/", headers={"host": "recs"})
    policy, instance = [], []
    for n in range(changes):
        v2 = 5 + n % 20
        routes = {"rules": [{"name": f"change-{n}", "backends": [
            {"subset": "version=v1", "weight": 100 - v2},
            {"subset": "version=v2", "weight": v2}]}]}
        started = time.monotonic()
        _, headers, _ = request("PUT", f"{registry}/v1/policy/recs/routes", routes)
        index = int(headers["x-mesh-index"])
        policy.append(until_all(admins, lambda a: policy_index(a) >= index, started))

        extra = f"extra-{n}"
        url = f"{registry}/v1/services/recs/instances/{extra}"
        started = time.monotonic()
        request("PUT", url, {"address": "127.0.0.1:9", "metadata": {"version": "v3"}, "ttl": "1m"})
        instance.append(until_all(admins, lambda a: lists(a, extra), started))
        request("DELETE", url)
        until_all(admins, lambda a: not lists(a, extra), time.monotonic())

    def figures(name, runs):
        one = [d for run in runs for d in run]
        last = [max(run) for run in runs]
        row = {
            "p50 one sidecar": quantile(one, 0.5), "p99 one sidecar": quantile(one, 0.99),
            "p50 all sidecars": quantile(last, 0.5), "p99 all sidecars": quantile(last, 0.99),
            "max": max(last),
        }
        print(f"{name:<22}" + "  ".join(f"{k} {v * 1000:7.1f} ms" for k, v in row.items()))
        return row

    print(f"{changes} changes, {len(admins)} calling sidecars, admin pages read every {POLL * 1000:.0f} ms")
    p = figures("policy (routes PUT)", policy)
    i = figures("instance (register)", instance)
    print("policy / instance:    " + "  ".join(f"{k} {p[k] / i[k]:.2f}x" for k in p))


if __name__ == "__main__":
    main()
