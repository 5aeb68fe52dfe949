# Shell functions shared by the compose end-to-end tests (compose.test.sh,
# compose.ha.test.sh), sourced rather than copied so both set up, tear down and report
# alike. A script sources it, then calls begin_run first.

torn_down=""

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# eventually BOUND WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails the
# test with WHAT if it has not within BOUND seconds. For waiting on a state, never a time.
eventually() {
    local bound=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + bound))
    until "$@"; do
        ((SECONDS < deadline)) || fail "$what (not within $bound s)"
        sleep 0.2
    done
}

# The default port if it is free, else any free one: another stack (or a developer's
# `docker/up.sh`) may hold the default.
port() {
    python3 - "$1" <<'EOF'
import socket, sys
for port in (int(sys.argv[1]), 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
}

# Names the run and installs its traps: begin_run NAME [COMPOSE_FILE...] sets
#   project   mesh-NAME-PID, the compose project name of this run
#   MESH_TAG  NAME-PID, the tag of every image it builds (exported, as PROMETHEUS_IMAGE)
#   images    those images (removed on exit unless KEEP_IMAGES is set)
#   compose   the docker-compose command as an array, with -f for each COMPOSE_FILE
#   client_label  a label for containers a test starts beside the stack (`docker run
#             --label "$client_label"`, e.g. clients in a sidecar's network namespace),
#             which teardown removes first
#   logs      a directory of this run's own under target/, removed on exit
#   started   $SECONDS when the run began
# then checks the tools every run needs.
begin_run() {
    local name=$1 file tool
    shift
    # Only what the script sets: a caller's profile or extra compose files would change
    # the stack.
    unset COMPOSE_PROFILES COMPOSE_FILE COMPOSE_PROJECT_NAME
    project="mesh-$name-$$"
    export MESH_TAG="$name-$$"
    export PROMETHEUS_IMAGE="mesh/prometheus-standin:$MESH_TAG"
    # A tag of the run's own, so removing them touches nobody else's.
    images=(registry proxy recommendations marketplace cache injector etcd prometheus-standin)
    images=("${images[@]/#/mesh/}")
    images=("${images[@]/%/:$MESH_TAG}")
    compose=(docker-compose -p "$project")
    client_label="mesh-e2e-client=$project"
    for file in "$@"; do
        compose+=(-f "$file")
    done
    started=$SECONDS
    mkdir -p target
    logs=$(mktemp -d "target/compose-$name.XXXXXX")
    trap on_exit EXIT
    trap 'exit 130' INT TERM

    step "tools"
    for tool in docker docker-compose python3 curl cargo; do
        command -v "$tool" >/dev/null || fail "$tool is required"
    done
}

# Stops and removes the test's client containers, then the project's containers, network
# and volumes, then checks that none is left. Runs once: at the end of the test, or from
# the trap when a step failed.
teardown() {
    [[ -n "$torn_down" ]] && return 0
    torn_down=yes
    local clients
    clients=$(docker ps -aq --filter "label=$client_label")
    [[ -z $clients ]] || docker rm -f $clients >/dev/null 2>&1 || true
    "${compose[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    if [[ -z "${KEEP_IMAGES:-}" ]]; then
        docker image rm "${images[@]}" >/dev/null 2>&1 || true
    fi
    local filter="label=com.docker.compose.project=$project" left
    left="$(docker ps -aq --filter "$filter")$(docker ps -aq --filter "label=$client_label")"
    left+="$(docker network ls -q --filter "$filter")"
    left+="$(docker volume ls -q --filter "$filter")$(docker volume ls -q --filter "name=${project}_")"
    left+="$(docker network ls -q --filter "name=${project}_")"
    if [[ -n "$left" ]]; then
        echo "left behind by project $project:" >&2
        docker ps -a --filter "$filter" >&2
        docker ps -a --filter "label=$client_label" >&2
        docker network ls --filter "name=${project}_" >&2
        docker volume ls --filter "name=${project}_" >&2
        return 1
    fi
    echo "no container, network or volume of $project is left"
}

on_exit() {
    local rc=$?
    if [[ $rc -ne 0 && -z "$torn_down" ]]; then
        echo "--- last logs of $project ---" >&2
        "${compose[@]}" logs --no-color --tail 25 >&2 2>&1 || true
    fi
    teardown || rc=1
    rm -rf "$logs"
    exit "$rc"
}
