# Shell functions shared by the compose end-to-end tests (compose.test.sh,
# compose.ha.test.sh), sourced rather than copied so both tear down and report alike.
#
# The sourcing script sets, before calling them:
#   project   the compose project name of this run
#   compose   the docker-compose command as an array: (docker-compose -p "$project" [-f ...])
#   images    every image the run builds (removed on exit unless KEEP_IMAGES is set)
#   logs      a directory of this run's own, removed on exit
# and installs the traps: trap on_exit EXIT; trap 'exit 130' INT TERM

torn_down=""

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

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

# Stops and removes the project's containers, network and volumes, then checks that none
# is left. Runs once: at the end of the test, or from the trap when a step failed.
teardown() {
    [[ -n "$torn_down" ]] && return 0
    torn_down=yes
    "${compose[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
    if [[ -z "${KEEP_IMAGES:-}" ]]; then
        docker image rm "${images[@]}" >/dev/null 2>&1 || true
    fi
    local filter="label=com.docker.compose.project=$project" left
    left="$(docker ps -aq --filter "$filter")$(docker network ls -q --filter "$filter")"
    left+="$(docker volume ls -q --filter "$filter")$(docker volume ls -q --filter "name=${project}_")"
    left+="$(docker network ls -q --filter "name=${project}_")"
    if [[ -n "$left" ]]; then
        echo "left behind by project $project:" >&2
        docker ps -a --filter "$filter" >&2
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
