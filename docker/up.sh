#!/usr/bin/env bash
# Builds the images, starts the compose deployment and waits until it is healthy.
#
#   docker/up.sh                                   # project "mesh", images tagged dev
#   COMPOSE_PROFILES=observability docker/up.sh    # with Grafana
#   docker/up.sh --no-build                        # reuse the images already built
#   docker/up.sh -f compose.ha.yaml                # with override files (-f, repeatable)
#
# Settings from the environment: COMPOSE_PROJECT_NAME (mesh), MESH_TAG (dev), the published
# ports MARKETPLACE_PORT (5000), REGISTRY_PORT (7700), PROMETHEUS_PORT (9090), GRAFANA_PORT
# (3000), the third-party images PROMETHEUS_IMAGE and GRAFANA_IMAGE, and HEALTHY_TIMEOUT
# (120, seconds). Stop with: docker-compose -p mesh down -v (see docs/deploy-compose.md),
# giving it the same -f files.
#
# Prometheus and Grafana come from Docker Hub. Where Prometheus' image cannot be pulled,
# a local stand-in is built once from Debian's package instead (docker/prometheus-standin.sh)
# and reused by later runs; Grafana has none, so the observability profile needs its image,
# which is checked before anything is built. etcd's image is built only for a stack that
# runs it (-f compose.ha.yaml). A failed start takes down what it created (containers,
# network, volumes).
set -euo pipefail
cd "$(dirname "$0")/.."

export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-mesh}"
timeout="${HEALTHY_TIMEOUT:-120}"
prometheus="http://127.0.0.1:${PROMETHEUS_PORT:-9090}"
prometheus_ui="$prometheus/targets"

say() { printf '==> %s\n' "$*"; }

# Present locally, or pulled now.
have_image() {
    docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1
}

usage() { echo "usage: docker/up.sh [--no-build] [-f OVERRIDE.yaml]..." >&2; exit 2; }
build=yes
files=(compose.yaml)
while (($#)); do
    case $1 in
        --no-build) build="" ;;
        -f) (($# >= 2)) || usage; files+=("$2"); shift ;;
        *) usage ;;
    esac
    shift
done
# Override files reach every docker-compose command below, the cleanup's too, through
# COMPOSE_FILE (compose.yaml first: paths resolve against it).
if ((${#files[@]} > 1)); then
    COMPOSE_FILE=$(IFS=:; echo "${files[*]}")
    export COMPOSE_FILE
fi
# Third-party images first: a missing one is reported before minutes of building.
if [[ ,${COMPOSE_PROFILES:-}, == *,observability,* ]]; then
    grafana_image="${GRAFANA_IMAGE:-grafana/grafana:10.4.2}"
    if ! have_image "$grafana_image"; then
        echo "error: $grafana_image cannot be pulled here, and the observability profile needs it;" >&2
        echo "       run without COMPOSE_PROFILES=observability (Prometheus alone), or set GRAFANA_IMAGE" >&2
        exit 1
    fi
fi
export PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}"
standin=""
if ! have_image "$PROMETHEUS_IMAGE"; then
    standin="mesh/prometheus-standin:${MESH_TAG:-dev}"
    if docker image inspect "$standin" >/dev/null 2>&1; then
        say "$PROMETHEUS_IMAGE cannot be pulled here: using $standin, built earlier"
    else
        say "$PROMETHEUS_IMAGE cannot be pulled here: building $standin from Debian's prometheus"
        bash docker/prometheus-standin.sh "$standin"
    fi
    export PROMETHEUS_IMAGE=$standin
    # Debian's build serves Prometheus' classic UI.
    prometheus_ui="$prometheus/classic/targets"
fi

# etcd's image only for a stack that runs etcd (compose.ha.yaml).
if [[ -n $build ]]; then
    if grep -qs 'mesh/etcd' "${files[@]}"; then
        bash docker/build.sh --etcd
    else
        bash docker/build.sh
    fi
fi

# A start that fails leaves nothing behind: no container, network or volume.
up_done=""
cleanup() {
    if [[ -z "$up_done" ]]; then
        echo "start failed: removing what it created (docker-compose down -v)" >&2
        docker-compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say "docker-compose up -d (project $COMPOSE_PROJECT_NAME)"
started=$SECONDS
# Returns once every container is created and started; apps wait for their sidecar's
# health (depends_on: service_healthy), so this already includes most of the wait.
docker-compose up -d

say "waiting until every container is healthy (at most $timeout s)"
while :; do
    pending=()
    for id in $(docker-compose ps -q); do
        # Running, and healthy if the image or compose.yaml gives it a health check; or a
        # one-shot job (no restart policy, e.g. compose.ha.yaml's registry-ca) that
        # finished with status 0.
        state=$(docker inspect -f '{{.Name}} {{.State.Status}}{{if .State.Health}}/{{.State.Health.Status}}{{end}}' "$id")
        [[ ${state#* } == running || ${state#* } == running/healthy ]] && continue
        job=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}}' "$id")
        [[ $job == "exited 0 no" || $job == "exited 0 " ]] && continue
        pending+=("${state#/}")
    done
    # Prometheus has no health check in compose.yaml (the official image and the test's
    # stand-in share no probe command): ask it directly.
    curl -fs -o /dev/null "$prometheus/-/ready" || pending+=("prometheus: not ready")
    ((${#pending[@]} == 0)) && break
    if ((SECONDS - started > timeout)); then
        printf '  not healthy: %s\n' "${pending[@]}" >&2
        docker-compose ps >&2
        docker-compose logs --no-color --tail 20 >&2 || true
        exit 1
    fi
    sleep 0.5
done
up_done=yes
say "healthy $((SECONDS - started)) s after up -d"

cat <<EOF

  page         http://127.0.0.1:${MARKETPLACE_PORT:-5000}/
  dashboard    http://127.0.0.1:${REGISTRY_PORT:-7700}/ui/
  registry     http://127.0.0.1:${REGISTRY_PORT:-7700}/v1/services   (sidecars: /v1/prometheus/targets)
EOF
if [[ -n "$(docker-compose ps -q registry-2 2>/dev/null)" ]]; then
    echo "  registry-2   http://127.0.0.1:${REGISTRY_2_PORT:-7701}/v1/services   (the same catalog, from etcd)"
fi
meshctl_bin="${CARGO_TARGET_DIR:-./target}/release/meshctl"
meshctl=$meshctl_bin
if [[ ! -x $meshctl ]]; then
    meshctl="cargo build --release -p meshctl && $meshctl"
fi
cat <<EOF
  meshctl      $meshctl --registry http://127.0.0.1:${REGISTRY_PORT:-7700} check
  calls        docker-compose -p $COMPOSE_PROJECT_NAME logs -f --no-log-prefix marketplace-sidecar   (a JSON line per call)
  tap          $meshctl_bin --registry http://127.0.0.1:${REGISTRY_PORT:-7700} tap recommendations   (with MESH_REGISTRY_TOKEN, the operator token)
  prometheus   $prometheus_ui
EOF
if [[ -n ${MESH_TRACE_COLLECTOR:-} ]]; then
    echo "  traces       $MESH_TRACE_COLLECTOR   (share of traces started by a sidecar: ${MESH_TRACE_SAMPLE_RATIO:-0})"
fi
if [[ -n "$(docker-compose ps -q grafana 2>/dev/null)" ]]; then
    echo "  grafana      http://127.0.0.1:${GRAFANA_PORT:-3000}/   (dashboard: Mesh overview)"
fi
if [[ -n $standin ]]; then
    # docker-compose would try to pull the default image for prometheus otherwise.
    echo
    echo "  For later docker-compose commands: export PROMETHEUS_IMAGE=$standin"
fi
