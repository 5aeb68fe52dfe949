#!/usr/bin/env bash
# The demo on a real Kubernetes (1.20, built here by k8s/cluster.sh), meshed by the injection
# webhook: builds (or reuses) the cluster, builds the images, creates the mesh CA, installs
# the webhook in container mode (1.20 has no native sidecars and no gRPC probes), labels the
# namespace for injection, deploys the dev overlay's plain workloads, waits for every pod,
# loads the page, kills a recommendations pod under load and checks that the page keeps
# loading, then tears everything down: the cluster, the images it built, its files.
#
# Run with: bash k8s/cluster-test.sh      (as root, with Docker; about 10 minutes the first
#                                          time for the cluster's build, then ~6 minutes)
#
# Test-only changes to the manifests, for what this cluster lacks (no CoreDNS, no
# kube-proxy, no volume provisioner): the sidecars find the registry through a hostAliases
# entry naming its pod address, the app pods get a DNS server on their own loopback (so no
# query leaves the machine), and the registry's claim becomes an emptyDir.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
# shellcheck source=k8s/cluster.sh
source k8s/cluster.sh

tag="k8s-test-$$"
export MESH_TAG=$tag
work=$(mktemp -d)
started=$SECONDS
step() { printf '\n==> %s (%d s)\n' "$*" $((SECONDS - started)); }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 && -s "$MESH_K8S_RUN/admin.kubeconfig" ]]; then
        echo "--- pods, events and logs at the failure"
        kc get pods -A -o wide 2>/dev/null || true
        kc -n mesh get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 || true
        for pod in $(kc -n mesh get pods -o name 2>/dev/null); do
            echo "--- $pod"
            kc -n mesh logs "$pod" --all-containers --tail=15 2>/dev/null || true
        done
    fi
    step "teardown"
    cluster_down >/dev/null 2>&1 || cluster_down || true
    for image in registry proxy recommendations marketplace cache injector; do
        docker rmi -f "mesh/$image:$tag" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "the cluster: build or reuse, then start"
cluster_build
cluster_up
# Every kubectl below, and in the scripts this one runs, talks to this cluster and keeps
# its cache in the cluster's run directory.
mkdir -p "$work/bin"
real_kubectl=$(command -v kubectl)
printf '#!/bin/sh\nexec %s --kubeconfig %s --cache-dir %s "$@"\n' "$real_kubectl" \
    "$(cluster_kubeconfig)" "$MESH_K8S_RUN/kubectl-cache" >"$work/bin/kubectl"
chmod +x "$work/bin/kubectl"
export PATH="$work/bin:$PATH"

step "images (mesh/*:$tag) and static binaries"
bash docker/build.sh
dist="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/dist"
export PATH="$PWD/$dist:$PATH" # mesh-registry gen-ca / gen-cert for the scripts below

step "the plain manifests (dev overlay), with this run's image tag"
kubectl kustomize k8s/overlays/dev | sed -E "s#image: mesh/([a-z]+):dev#image: mesh/\1:$tag#" \
    >"$work/plain.yaml"
python3 - "$work/plain.yaml" "$work" <<'EOF'
import sys, yaml
plain, work = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(plain)) if d]
# No volume provisioner here: the registry keeps its snapshot in an emptyDir instead of the
# claim (a restart loses it; the sidecars register again within a heartbeat).
docs = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
for d in docs:
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "registry":
        for volume in d["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                del volume["persistentVolumeClaim"]
                volume["emptyDir"] = {}
apps = {"marketplace", "recommendations", "cache"}
first = [d for d in docs if not (d["kind"] == "Deployment" and d["metadata"]["name"] in apps)]
later = [d for d in docs if d not in first]
yaml.safe_dump_all(first, open(f"{work}/first.yaml", "w"))
yaml.safe_dump_all(later, open(f"{work}/apps.yaml", "w"))
print(f"{len(first)} objects first (the registry among them), then {len(later)} app Deployments")
EOF

step "namespace mesh, labelled for injection; the mesh CA; the webhook (container mode)"
python3 -c '
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Namespace":
        d["metadata"].setdefault("labels", {})["mesh.dev/injection"] = "enabled"
        print(yaml.safe_dump(d))
' "$work/first.yaml" | kubectl apply -f -
bash k8s/create-ca.sh --namespace mesh
bash k8s/install-webhook.sh --namespace mesh --sidecar container \
    --proxy-image "mesh/proxy:$tag" --injector-image "mesh/injector:$tag"

step "the registry"
kubectl apply -f "$work/first.yaml"
kubectl -n mesh rollout status deploy/registry --timeout=180s
registry_ip=$(kubectl -n mesh get pods -l app.kubernetes.io/name=registry \
    -o jsonpath='{.items[0].status.podIP}')
[[ -n $registry_ip ]] || fail "the registry pod has no address"
echo "registry pod at $registry_ip"

step "the apps: marketplace and cache plain, the webhook meshes their pods as they are created"
# recommendations is probed over gRPC, which a 1.20 API server refuses in the Deployment
# itself, before any webhook sees a pod: it goes through meshctl inject --sidecar container,
# which makes those probes TCP (its pods then pass the webhook unchanged: injecting twice
# is injecting once).
python3 - "$work/apps.yaml" "$registry_ip" "$work" <<'EOF'
import sys, yaml
apps, registry_ip, work = sys.argv[1], sys.argv[2], sys.argv[3]
plain, grpc = [], []
for d in yaml.safe_load_all(open(apps)):
    spec = d["spec"]["template"]["spec"]
    # No CoreDNS here: the registry's name as /etc/hosts says, and a resolver on the pod's
    # own loopback so that a stray query goes nowhere.
    spec["hostAliases"] = [{"ip": registry_ip, "hostnames": ["registry.mesh.svc", "registry"]}]
    spec["dnsPolicy"] = "None"
    spec["dnsConfig"] = {"nameservers": ["127.0.0.1"]}
    (grpc if d["metadata"]["name"] == "recommendations" else plain).append(d)
yaml.safe_dump_all(plain, open(f"{work}/apps-plain.yaml", "w"))
yaml.safe_dump_all(grpc, open(f"{work}/apps-grpc.yaml", "w"))
EOF
"$dist/meshctl" inject --sidecar container --proxy-image "mesh/proxy:$tag" \
    "$work/apps-grpc.yaml" >"$work/apps-injected.yaml"
kubectl apply -f "$work/apps-plain.yaml" -f "$work/apps-injected.yaml"
for app in cache recommendations marketplace; do
    kubectl -n mesh rollout status "deploy/$app" --timeout=300s
done
kubectl -n mesh get pods -o wide

step "every app pod was injected: the sidecar first, the app's gRPC probe made TCP"
python3 - <<'EOF'
import json, subprocess, sys
pods = json.loads(subprocess.run(["kubectl", "-n", "mesh", "get", "pods", "-o", "json"],
                                 check=True, capture_output=True, text=True).stdout)["items"]
apps = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/name")
        in ("marketplace", "recommendations", "cache")]
problems = []
for p in apps:
    name = p["metadata"]["name"]
    containers = p["spec"]["containers"]
    if containers[0]["name"] != "mesh-proxy":
        problems.append(f"{name}: first container is {containers[0]['name']}")
    if "mesh.dev/injected" not in p["metadata"].get("annotations", {}):
        problems.append(f"{name}: no mesh.dev/injected annotation")
    ready = [s["ready"] for s in p["status"].get("containerStatuses", [])]
    if not ready or not all(ready):
        problems.append(f"{name}: containers ready {ready}")
    for c in containers:
        for probe in ("readinessProbe", "livenessProbe"):
            if "grpc" in c.get(probe, {}):
                problems.append(f"{name}/{c['name']}: a gRPC {probe}")
others = [p["metadata"]["name"] for p in pods if p not in apps
          and any(c["name"] == "mesh-proxy" for c in p["spec"]["containers"])]
problems += [f"{n}: meshed although labelled mesh.dev/inject=disabled" for n in others]
print(f"{len(apps)} app pods, all meshed" if not problems else "\n".join(problems))
sys.exit(1 if problems or len(apps) < 6 else 0)
EOF

marketplace_ip=$(kubectl -n mesh get pods -l app.kubernetes.io/name=marketplace \
    -o jsonpath='{.items[0].status.podIP}')
page="http://$marketplace_ip:5000/"

step "the page, through marketplace's sidecar to recommendations: $page"
python3 - "$page" <<'EOF'
import sys, time
sys.path.insert(0, ".")
from compose_pageload import PageLoads
loads = PageLoads(sys.argv[1], rate=5, duration=10)
deadline = time.monotonic() + 60
while True:
    loads.results.clear()
    loads.load()
    if loads.results[-1][2] is None or time.monotonic() > deadline:
        break
    time.sleep(1)
started, served, reason = loads.results[-1]
if reason:
    sys.exit(f"the page does not load: {reason}")
print(f"the page loads, its books from recommendations instance {served}")
EOF

step "a recommendations pod killed under load: the page keeps loading"
victim=$(kubectl -n mesh get pods -l app.kubernetes.io/name=recommendations \
    -o jsonpath='{.items[0].metadata.name}')
python3 - "$page" "$victim" <<'EOF'
import subprocess, sys, time
sys.path.insert(0, ".")
from compose_pageload import PageLoads
page, victim = sys.argv[1], sys.argv[2]
loads = PageLoads(page, rate=5, duration=30)
def kill():
    time.sleep(5)
    subprocess.run(["kubectl", "-n", "mesh", "delete", "pod", victim, "--grace-period=0",
                    "--force", "--wait=false"], check=True, capture_output=True)
    print(f"killed {victim} at {time.monotonic() - loads.t0:.1f} s", flush=True)
elapsed = loads.run(kill)
loads.print_rate(elapsed)
failed = [r for r in loads.results if r[2]]
served = sorted({r[1] for r in loads.results if r[1]})
print(f"{len(loads.results)} loads, {len(failed)} failed; served by {', '.join(served)}")
loads.print_failures()
sys.exit(1 if failed or len(loads.results) < 100 else 0)
EOF

step "passed"
