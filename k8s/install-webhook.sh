#!/usr/bin/env bash
# Installs the injection webhook (k8s/webhook/) in a cluster whose mesh CA exists
# (k8s/create-ca.sh): issues its serving certificate for mesh-injector.<namespace>.svc from
# the CA into the Secret mesh-injector-tls, fills the CA certificate into the
# MutatingWebhookConfiguration's caBundle, applies both and waits for the webhook.
# Run it again to renew the certificate (a year by default).
#
# The CA key is read from the Secret registry-ca into a private temporary directory and
# deleted with it; the webhook's certificate names no mesh identity.
#
# Run with: bash k8s/install-webhook.sh [--namespace NS] [--sidecar native|container]
#             [--proxy-image IMAGE] [--injector-image IMAGE]
# Then mesh a namespace: kubectl label namespace NS mesh.dev/injection=enabled
# It runs mesh-registry from PATH or target/release, else the image mesh/registry:dev.
set -euo pipefail

namespace=mesh
sidecar=native
proxy_image=mesh/proxy:${MESH_TAG:-dev}
injector_image=mesh/injector:${MESH_TAG:-dev}
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace) namespace=$2; shift 2 ;;
        --sidecar) sidecar=$2; shift 2 ;;
        --proxy-image) proxy_image=$2; shift 2 ;;
        --injector-image) injector_image=$2; shift 2 ;;
        *) echo "usage: $0 [--namespace NS] [--sidecar native|container] [--proxy-image IMAGE] [--injector-image IMAGE]" >&2
           exit 2 ;;
    esac
done
case "$sidecar" in native|container) ;; *) echo "--sidecar: native or container" >&2; exit 2 ;; esac

k8s="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$k8s/.." && pwd)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
mkdir "$work/ca"

if ! kubectl -n "$namespace" get secret registry-ca >/dev/null 2>&1; then
    echo "no Secret registry-ca in namespace $namespace: create the mesh CA first (k8s/create-ca.sh)" >&2
    exit 1
fi
kubectl -n "$namespace" get secret registry-ca -o jsonpath='{.data.ca\.pem}' | base64 -d >"$work/ca/ca.pem"
kubectl -n "$namespace" get secret registry-ca -o jsonpath='{.data.ca-key\.pem}' | base64 -d >"$work/ca/ca-key.pem"

name="mesh-injector.$namespace.svc"
if command -v mesh-registry >/dev/null 2>&1; then
    mesh-registry gen-cert --ca "$work/ca" --name "$name" --out "$work/tls"
elif [ -x "$repo/target/release/mesh-registry" ]; then
    "$repo/target/release/mesh-registry" gen-cert --ca "$work/ca" --name "$name" --out "$work/tls"
else
    docker run --rm --user "$(id -u):$(id -g)" -v "$work:/work" "mesh/registry:${MESH_TAG:-dev}" \
        gen-cert --ca /work/ca --name "$name" --out /work/tls
fi
kubectl -n "$namespace" create secret tls mesh-injector-tls \
    --cert="$work/tls/tls.crt" --key="$work/tls/tls.key" --dry-run=client -o yaml | kubectl apply -f -

ca_bundle=$(base64 -w0 <"$work/ca/ca.pem")
kubectl kustomize "$k8s/webhook" |
    sed -e "s|caBundle: \"\"|caBundle: $ca_bundle|" \
        -e "s|namespace: mesh$|namespace: $namespace|" \
        -e "s|image: mesh/injector:dev|image: $injector_image|" \
        -e "s|value: mesh/proxy:dev|value: $proxy_image|" |
    python3 -c '
import sys
text = sys.stdin.read()
sidecar = sys.argv[1]
old = "- name: MESHCTL_SIDECAR\n          value: native"
assert old in text, "the webhook Deployment has no MESHCTL_SIDECAR"
sys.stdout.write(text.replace(old, "- name: MESHCTL_SIDECAR\n          value: " + sidecar))
' "$sidecar" | kubectl apply -f -
kubectl -n "$namespace" rollout status deploy/mesh-injector --timeout=180s
echo "the injection webhook serves $name ($sidecar sidecars, image $proxy_image)"
echo "mesh a namespace: kubectl label namespace NAME mesh.dev/injection=enabled"
echo "or a workload: annotate its pod template mesh.dev/inject: enabled"
