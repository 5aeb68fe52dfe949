#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests: renders every overlay, injects the
# sidecars with meshctl inject (built here unless MESHCTL names a binary), validates each
# object against the Kubernetes schemas (strict: unknown fields are errors) for 1.29, the
# oldest version with native sidecars, and for the newest version kubernetes-validate
# ships, then checks the invariants in test_manifests.py. No cluster needed.
#
# Run with: bash k8s/validate.sh        (from anywhere; installs what it needs with pip)
set -euo pipefail
k8s="$(cd "$(dirname "$0")" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# --- renderer: kubectl's built-in kustomize, else a standalone kustomize ---------------
if command -v kubectl >/dev/null 2>&1; then
    render() { kubectl kustomize "$1"; }
    echo "renderer: kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
else
    if ! command -v kustomize >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && apt-cache show kustomize >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kustomize >/dev/null
    fi
    if ! command -v kustomize >/dev/null 2>&1; then
        echo "neither kubectl nor kustomize is installed: install kubectl (it renders with its built-in kustomize)" >&2
        exit 1
    fi
    render() { kustomize build "$1"; }
    echo "renderer: kustomize $(kustomize version 2>/dev/null)"
fi

# --- schema validator -----------------------------------------------------------------
# In a virtualenv of its own: a distribution's Python refuses packages in its own
# environment (externally managed).
venv=${K8S_VALIDATE_VENV:-$HOME/.cache/mesh/k8s-validate-venv}
[[ -x $venv/bin/python3 ]] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.37,<2' pyyaml
python="$venv/bin/python3"

# --- render every overlay -------------------------------------------------------------
overlays=(k8s base)
for dir in "$k8s"/overlays/*/; do
    overlays+=("$(basename "$dir")")
done
for name in "${overlays[@]}"; do
    case "$name" in
        k8s) dir="$k8s" ;;
        base) dir="$k8s/base" ;;
        *) dir="$k8s/overlays/$name" ;;
    esac
    render "$dir" >"$out/$name.plain.yaml"
done

# --- inject the sidecars --------------------------------------------------------------
# The workloads are plain apps with mesh.dev/* annotations: meshctl inject adds their
# sidecars, as a user's pipeline or the admission webhook would, and what is validated
# below is its output. The sidecar's image takes the tag kustomize gave the others.
repo="$(cd "$k8s/.." && pwd)"
meshctl=${MESHCTL:-}
if [[ -z $meshctl ]]; then
    (cd "$repo" && cargo build --quiet --release -p meshctl)
    meshctl="${CARGO_TARGET_DIR:-$repo/target}/release/meshctl"
fi
for name in "${overlays[@]}"; do
    plain="$out/$name.plain.yaml"
    tag=$(sed -n 's|^ *image: mesh/registry:\(.*\)$|\1|p' "$plain" | head -n 1)
    image="mesh/proxy${tag:+:$tag}"
    "$meshctl" inject --proxy-image "$image" "$plain" >"$out/$name.yaml" 2>"$out/$name.inject.log" \
        || { cat "$out/$name.inject.log" >&2; exit 1; }
    # Injecting again changes nothing; uninjecting gives back the plain manifests.
    "$meshctl" inject --proxy-image "$image" "$out/$name.yaml" >"$out/$name.twice.yaml" 2>/dev/null
    "$meshctl" uninject "$out/$name.yaml" >"$out/$name.uninjected.yaml" 2>/dev/null
done

# --- kinds per overlay, then schema validation ------------------------------------------
# The injection webhook's manifests, and meshctl inject's golden outputs (manifests
# written like users', injected), too.
render "$k8s/webhook" >"$out/webhook.yaml"
validated=("${overlays[@]}" webhook)
for golden in "$repo"/meshctl/tests/inject/*.golden.yaml; do
    name="inject-$(basename "$golden" .golden.yaml)"
    cp "$golden" "$out/$name.yaml"
    validated+=("$name")
done
set +e
"$python" - "$out" "${validated[@]}" <<'EOF' | tee "$out/schema.log"
import collections, os, sys
import yaml
import kubernetes_validate as kv
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, VersionNotSupportedError

out, overlays = sys.argv[1], sys.argv[2:]
versions = ["1.29.0", kv.latest_version()]
passed = failed = 0
for overlay in overlays:
    with open(os.path.join(out, f"{overlay}.yaml")) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    objects = [i for o in objects for i in (o.get("items", []) if o["kind"] == "List" else [o])]
    kinds = collections.Counter(o["kind"] for o in objects)
    print(f"{overlay}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    for obj in objects:
        for version in versions:
            name = f"{overlay}: {obj['kind']}/{obj['metadata']['name']} @ {version}"
            try:
                kv.validate(obj, version, strict=True)
                passed += 1
            except (ValidationError, SchemaNotFoundError, VersionNotSupportedError) as error:
                failed += 1
                path = "/".join(str(p) for p in getattr(error, "path", []))
                print(f"FAIL {name}: {path}: {getattr(error, 'message', error)}")
print(f"schema ({', '.join(versions)}, strict): {passed} passed, {failed} failed")
EOF
schema_rc=${PIPESTATUS[0]}

# --- injection is idempotent and reversible ---------------------------------------------
"$python" - "$out" "${overlays[@]}" <<'EOF' | tee "$out/inject.log"
import os, sys
import yaml
out, overlays = sys.argv[1], sys.argv[2:]
passed = failed = 0
def docs(name):
    with open(os.path.join(out, name)) as f:
        return [o for o in yaml.safe_load_all(f) if o]
for overlay in overlays:
    for what, a, b in [("injecting twice is injecting once", "yaml", "twice.yaml"),
                       ("uninject gives back the plain manifests", "plain.yaml", "uninjected.yaml")]:
        if docs(f"{overlay}.{a}") == docs(f"{overlay}.{b}"):
            passed += 1
        else:
            failed += 1
            print(f"FAIL {overlay}: {what}")
print(f"injection: {passed} passed, {failed} failed")
EOF
inject_rc=${PIPESTATUS[0]}

# --- invariants -----------------------------------------------------------------------
echo
echo "invariants:"
"$python" "$k8s/test_manifests.py" "$out" | tee "$out/invariants.log" | grep -v '^ok '
invariants_rc=${PIPESTATUS[0]}

# --- the Prometheus configuration, where promtool is installed ------------------------
promtool_passed=0 promtool_failed=0
if command -v promtool >/dev/null 2>&1; then
    echo
    if promtool check config "$k8s/components/prometheus/prometheus.yml"; then
        promtool_passed=1
    else
        promtool_failed=1
    fi
else
    echo "promtool not installed: the Prometheus configuration is checked by the invariants only"
fi
set -e

count() { sed -n "s/.*\b\([0-9]\+\) $2.*/\1/p" "$1" | tail -n 1; }
passed=$(($(count "$out/schema.log" passed) + $(count "$out/inject.log" passed) + $(count "$out/invariants.log" passed) + promtool_passed))
failed=$(($(count "$out/schema.log" failed) + $(count "$out/inject.log" failed) + $(count "$out/invariants.log" failed) + promtool_failed))
echo
echo "$passed passed, $failed failed"
if [ "$schema_rc" -ne 0 ] || [ "$inject_rc" -ne 0 ] || [ "$invariants_rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
    exit 1
fi
