#!/usr/bin/env bash
# Creates the mesh's CA in a cluster, once, before the first apply of any
# overlay (dev included):
#
#   Secret registry-ca       ca.pem + ca-key.pem   mounted by the registry only: it signs
#                                                  the sidecars' certificates with the key
#   ConfigMap mesh-ca-bundle ca.pem                mounted by every sidecar, to check that
#                                                  it talks to the real registry
#
# The key is made by `mesh-registry gen-ca` in a private temporary directory and deleted
# after the upload: the Secret is its only copy (or --keep DIR keeps one, for your own
# secret store). A CA that exists already is left alone: replacing it means restarting
# every sidecar (docs/deploy-kubernetes.md, "Credentials").
#
# Run with: bash k8s/create-ca.sh [--namespace NS] [--keep DIR]
# It runs mesh-registry from PATH or target/release, else the image mesh/registry:dev
# (MESH_TAG=... for another tag) with docker.
set -euo pipefail

namespace=mesh
keep=
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace) namespace=$2; shift 2 ;;
        --keep) keep=$2; shift 2 ;;
        *) echo "usage: $0 [--namespace NS] [--keep DIR]" >&2; exit 2 ;;
    esac
done
if [ -n "$keep" ] && [ -e "$keep/ca-key.pem" ]; then
    echo "$keep/ca-key.pem exists already: give --keep an empty directory" >&2
    exit 1
fi

if kubectl -n "$namespace" get secret registry-ca >/dev/null 2>&1; then
    echo "Secret registry-ca exists in namespace $namespace: left as it is"
    if ! kubectl -n "$namespace" get configmap mesh-ca-bundle >/dev/null 2>&1; then
        echo "but the ConfigMap mesh-ca-bundle does not: make it from the Secret's certificate with" >&2
        echo "  kubectl -n $namespace get secret registry-ca -o jsonpath='{.data.ca\\.pem}' | base64 -d > ca.pem" >&2
        echo "  kubectl -n $namespace create configmap mesh-ca-bundle --from-file=ca.pem=ca.pem" >&2
        exit 1
    fi
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
repo="$(cd "$(dirname "$0")/.." && pwd)"
if command -v mesh-registry >/dev/null 2>&1; then
    mesh-registry gen-ca --out "$work/ca" --bundle-out "$work/bundle"
elif [ -x "$repo/target/release/mesh-registry" ]; then
    "$repo/target/release/mesh-registry" gen-ca --out "$work/ca" --bundle-out "$work/bundle"
else
    docker run --rm --user "$(id -u):$(id -g)" -v "$work:/work" "mesh/registry:${MESH_TAG:-dev}" \
        gen-ca --out /work/ca --bundle-out /work/bundle
fi

kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
kubectl -n "$namespace" create secret generic registry-ca \
    --from-file=ca.pem="$work/ca/ca.pem" --from-file=ca-key.pem="$work/ca/ca-key.pem"
# Replaces a bundle left from an earlier CA (the Secret was deleted to make a new one).
kubectl -n "$namespace" create configmap mesh-ca-bundle --from-file=ca.pem="$work/bundle/ca.pem" \
    --dry-run=client -o yaml | kubectl apply -f -
if [ -n "$keep" ]; then
    mkdir -p "$keep"
    cp -p "$work/ca/ca.pem" "$work/ca/ca-key.pem" "$keep/"
    echo "a copy of the CA is in $keep (ca-key.pem, mode 0600): keep it where you keep secrets"
fi
