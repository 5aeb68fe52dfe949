#!/usr/bin/env bash
# Creates or rotates the join tokens of the named services: a new random token per
# service, stored twice, in Secrets that only their own pods mount:
#
#   Secret mesh-join-token-<service>  key token        that service's sidecars (MESH_JOIN_TOKEN):
#                                                      a certificate for <service> only
#   Secret registry-join-tokens       key join-tokens  the registry (REGISTRY_JOIN_TOKENS):
#                                                      one `<service> <token>` line each
#
# Services not named keep their lines and Secrets. Both are read when a container starts:
# restart the registry, then the named services' workloads (the commands are printed).
# Not for the dev overlay, which generates fixed tokens of its own.
#
# Run with: bash k8s/join-tokens.sh [--namespace NS] SERVICE...
#   first time:  bash k8s/join-tokens.sh marketplace recommendations
#   rotation:    bash k8s/join-tokens.sh recommendations
set -euo pipefail

namespace=mesh
services=()
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace) namespace=$2; shift 2 ;;
        -*) echo "usage: $0 [--namespace NS] SERVICE..." >&2; exit 2 ;;
        *) services+=("$1"); shift ;;
    esac
done
if [ ${#services[@]} -eq 0 ]; then
    echo "usage: $0 [--namespace NS] SERVICE..." >&2
    exit 2
fi
if [ "$(printf '%s\n' "${services[@]}" | sort -u | wc -l)" -ne ${#services[@]} ]; then
    echo "a service is named twice" >&2
    exit 2
fi
for service in "${services[@]}"; do
    # The registry's rule for service names; also what a Secret's name may hold.
    if ! [[ $service =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; then
        echo "$service: not a service name (lower-case letters, digits and -)" >&2
        exit 2
    fi
done

kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"
# The registry's current file (none yet: empty; any other failure stops here, before a
# file without the other services' tokens could replace it), without the lines of the
# services being (re)made.
encoded=$(kubectl -n "$namespace" get secret registry-join-tokens --ignore-not-found \
    -o jsonpath='{.data.join-tokens}')
current=$(printf '%s' "$encoded" | base64 -d)
kept=$(printf '%s\n' "$current" | awk -v named=" ${services[*]} " '
    NF == 0 || $1 ~ /^#/ { next }
    index(named, " " $1 " ") == 0 { print }')

# Tokens go through files in a private directory, not through command lines that other
# users of this machine could read in the process list.
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '# services token (k8s/join-tokens.sh)\n' >"$work/join-tokens"
[ -z "$kept" ] || printf '%s\n' "$kept" >>"$work/join-tokens"
for service in "${services[@]}"; do
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
    kubectl -n "$namespace" create secret generic "mesh-join-token-$service" \
        --from-file=token="$work/token" --dry-run=client -o yaml | kubectl apply -f -
    printf '%s %s\n' "$service" "$(cat "$work/token")" >>"$work/join-tokens"
done
kubectl -n "$namespace" create secret generic registry-join-tokens \
    --from-file=join-tokens="$work/join-tokens" --dry-run=client -o yaml | kubectl apply -f -

echo
echo "The registry reads its file at start, and sidecars their token: restart the registry, then"
echo "the workloads of ${services[*]}:"
echo "  kubectl -n $namespace rollout restart deploy/registry && kubectl -n $namespace rollout status deploy/registry"
echo "  kubectl -n $namespace rollout restart$(printf ' deploy/%s' "${services[@]}")"
