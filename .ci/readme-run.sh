#!/usr/bin/env bash
# The README's run command, exactly as written, run as a newcomer runs it: in the
# background until the launcher prints its ready line, then the page and the dashboard,
# then Ctrl-C (SIGINT to its process group, as a terminal sends it) and a check that every
# process it started is gone. Then a second time, which must build nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Jobs in their own process group, like a terminal's foreground job.
set -m

READY_LINE="mesh-demo: ready"
# A cold release build on 2 cores takes about 10 minutes; a warm start, seconds.
COLD_BOUND=${README_RUN_COLD_BOUND:-2400}
WARM_BOUND=${README_RUN_WARM_BOUND:-120}
LOGS=$(mktemp -d)

command_line=$(bash .ci/readme-command.sh Run)
echo "README run command: $command_line"
# The newcomer's first command is the embedded, no-Docker mesh.
EXPECTED="cargo run --release -p mesh-demo"

fail() {
    echo "FAIL: $*" >&2
    for log in "$LOGS"/*.log; do
        [ -f "$log" ] || continue
        echo "--- last lines of $log" >&2
        tail -n 60 "$log" >&2
    done
    exit 1
}

[ "$command_line" = "$EXPECTED" ] \
    || fail "README.md's run command is '$command_line', not '$EXPECTED'"

# run LABEL BOUND: starts the command, waits for the ready line, loads the page and the
# dashboard, presses Ctrl-C, and checks that every process it listed is gone.
run() {
    local label=$1 bound=$2 log="$LOGS/$1.log"
    local started=$SECONDS
    bash -c "$command_line" >"$log" 2>&1 &
    local job=$!
    trap 'kill -KILL -- -'"$job"' 2>/dev/null || true' EXIT
    until grep -qx "$READY_LINE" "$log"; do
        kill -0 "$job" 2>/dev/null || fail "$label: the command exited before printing '$READY_LINE'"
        ((SECONDS - started < bound)) || fail "$label: no '$READY_LINE' within ${bound}s"
        sleep 1
    done
    echo "$label: ready after $((SECONDS - started))s"

    local page dashboard
    page=$(curl -fsS --max-time 10 http://127.0.0.1:5000/) || fail "$label: the page did not load"
    grep -q "Served by recommendations instance" <<<"$page" ||
        fail "$label: the page does not name the instance that served it: $page"
    dashboard=$(curl -fsS --max-time 10 http://127.0.0.1:7700/ui/) || fail "$label: the dashboard did not load"
    grep -q "<title>mesh-registry dashboard</title>" <<<"$dashboard" ||
        fail "$label: /ui/ is not the dashboard"
    echo "$label: page and dashboard served"

    local pids
    pids=$(sed -n 's/^  pids  *//p' "$log" | tr ' ' '\n' | sed -n 's/.*=\([0-9][0-9]*\)$/\1/p')
    [ "$(wc -w <<<"$pids")" -ge 10 ] || fail "$label: the banner lists too few pids: $pids"

    kill -INT -- -"$job"
    local waited=0
    while kill -0 "$job" 2>/dev/null; do
        ((waited < 60)) || fail "$label: still running 60s after Ctrl-C"
        sleep 1
        waited=$((waited + 1))
    done
    wait "$job" || fail "$label: the command exited with status $? after Ctrl-C"
    trap - EXIT
    for pid in $pids; do
        if kill -0 "$pid" 2>/dev/null; then
            fail "$label: pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null)) outlived the launcher"
        fi
    done
    grep -q "every process has stopped" "$log" || fail "$label: no orderly stop in the log"
    echo "$label: Ctrl-C stopped every process it started"
}

run cold "$COLD_BOUND"
# The launcher's own build must compile only the mesh's programs: a crate from crates.io
# compiled there means the outer build's work was thrown away (and the launcher replaced).
inner=$(sed -n '/building the mesh.s programs/,$p' "$LOGS/cold.log" | grep -E '^ *Compiling [^ ]+ v[^ ]+$' || true)
[ -z "$inner" ] || fail "the launcher's build recompiled dependencies:"$'\n'"$inner"

run warm "$WARM_BOUND"
compiled=$(grep -E '^ *Compiling ' "$LOGS/warm.log" || true)
[ -z "$compiled" ] || fail "the second run compiled again:"$'\n'"$compiled"
echo "README run command: works from a clean clone, and a second run builds nothing"
rm -rf "$LOGS"
