#!/usr/bin/env bash
# How fast a traffic policy change reaches the sidecars that apply it, against how fast an
# instance change reaches them in the same run (both ride the registry's blocking queries).
#
#   bench/policy.sh                  # CALLERS=10 CHANGES=50, about a minute after the build
#
# Starts a registry, two instances of `recs` (metadata version=v1 and version=v2) and
# CALLERS calling sidecars, each of which has called `recs` once, so it follows its
# routes and its endpoints. Then, CHANGES times: one PUT of recs' routes (a canary with
# other weights), timed until every calling sidecar's /debug/policy shows the new policy
# index; and one registration of a new recs instance, timed until every calling sidecar's
# /debug/endpoints lists it (then it is removed again). Prints p50, p99 and max for one
# sidecar and for the last of them, and the policy figures as ratios of the instance ones.
# Only 127.0.0.1; ports from BENCH_PORT_BASE (default 18600).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

CALLERS=${CALLERS:-10}
CHANGES=${CHANGES:-50}
BASE=${BENCH_PORT_BASE:-18600}
cargo build --release -q -p mesh-registry -p mesh-proxy -p mesh-bench
BIN=$(target_dir)/release
TMP=$(mktemp -d)
PIDS=()
trap cleanup EXIT

start() { "$@" >>"$TMP/log" 2>&1 & PIDS+=("$!"); }

REGISTRY=$BASE; BACKEND=$((BASE + 1))
start "$BIN/mesh-registry" --listen "127.0.0.1:$REGISTRY"
start "$BIN/mesh-bench" backend --listen "127.0.0.1:$BACKEND"
wait_port "$REGISTRY"; wait_port "$BACKEND"
port=$((BASE + 10))
for version in v1 v2; do
  start "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" --service recs \
    --instance-id "recs-$version" --metadata "version=$version" --app "127.0.0.1:$BACKEND" \
    --inbound "127.0.0.1:$port" --outbound "127.0.0.1:$((port + 1))" --admin "127.0.0.1:$((port + 2))"
  port=$((port + 3))
done
ADMINS=()
for i in $(seq "$CALLERS"); do
  start "$BIN/mesh-proxy" --registry "http://127.0.0.1:$REGISTRY" \
    --outbound "127.0.0.1:$port" --admin "127.0.0.1:$((port + 1))"
  wait_port "$port"
  ADMINS+=("$port:$((port + 1))")
  port=$((port + 2))
done
python3 bench/policy_propagation.py "http://127.0.0.1:$REGISTRY" "$CHANGES" "${ADMINS[@]}"
