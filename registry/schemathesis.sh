#!/usr/bin/env bash
# Property-based tests of the registry's HTTP API against its own OpenAPI document
# (registry/openapi.json, served at /openapi.json), with schemathesis: no input may cause
# a server error, every answer must be documented (status code, content type, body
# schema, headers), and input the document forbids must be refused.
#
#   bash registry/schemathesis.sh [path/to/mesh-registry]     # default target/release/mesh-registry
#
# It installs schemathesis into a virtualenv when missing (SCHEMATHESIS_VENV, default
# ~/.cache/mesh/schemathesis-venv), starts the registry on a free port of 127.0.0.1 with a
# CA in a temporary directory (so /v1/ca/* exist), and exits non-zero on any failure.
# Every request goes to 127.0.0.1 only. ST_MAX_EXAMPLES (default 50) bounds the test cases
# per operation; the whole run takes about two minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

registry_bin=${1:-${CARGO_TARGET_DIR:-target}/release/mesh-registry}
venv=${SCHEMATHESIS_VENV:-$HOME/.cache/mesh/schemathesis-venv}
max_examples=${ST_MAX_EXAMPLES:-50}
version=4.32.5

if [[ ! -x $registry_bin ]]; then
    echo "error: no registry binary at $registry_bin; build it with" \
        "'cargo build --release -p mesh-registry' or pass its path" >&2
    exit 2
fi
if [[ ! -x $venv/bin/schemathesis ]] || ! "$venv/bin/schemathesis" --version | grep -q "$version"; then
    echo "installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts a registry on a free port (it binds 127.0.0.1:0 and logs the address) with the
# given extra flags; sets `base` to its URL.
start_registry() {
    local name=$1
    shift
    "$registry_bin" --listen 127.0.0.1:0 "$@" >"$work/$name.log" 2>&1 &
    pids+=("$!")
    base=
    for _ in $(seq 100); do
        base=$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$work/$name.log" | head -n1 | cut -d' ' -f3 || true)
        [[ -n $base ]] && return 0
        sleep 0.1
    done
    echo "error: the registry ($name) did not start:" >&2
    cat "$work/$name.log" >&2
    exit 1
}

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection
# A fixed seed keeps CI repeatable; SCHEMATHESIS_SEED=random (or a number) explores further.
seed=${SCHEMATHESIS_SEED:-20261201}
seed_flag=(--seed "$seed")
[[ $seed == random ]] && seed_flag=()
st() {
    local config=$1
    shift
    # --no-color and no reports: the output is the log.
    "$venv/bin/schemathesis" --no-color --config-file "$config" run "$base/openapi.json" \
        --url "$base" --checks "$checks" --workers 1 --request-timeout 5 "${seed_flag[@]}" \
        --suppress-health-check all "$@"
}

status=0
join_token=schemathesis-join-token
start_registry with-ca --ca-dir "$work/ca" --join-token "$join_token"

echo "==> every operation, with the CA and the join token ($base)"
st registry/schemathesis.toml --max-examples "$max_examples" \
    --header "Authorization: Bearer $join_token" || status=1

echo "==> blocking-query waits (index 0 never blocks)"
st registry/schemathesis-wait.toml --max-examples "$max_examples" \
    --include-path-regex '^/v1/(services(/\{service\})?|events)$' || status=1

echo "==> the CA routes without a join token (401)"
st registry/schemathesis.toml --max-examples 20 --include-path-regex '^/v1/ca/' || status=1

operator_token=schemathesis-operator-token
start_registry with-operator --token "$operator_token"
# Not the admin relays: the instances registered here name random admin hosts, and their
# lookups would leave the machine.
echo "==> writes as the operator (instances, policies), on a registry that binds writes to writers ($base)"
st registry/schemathesis.toml --max-examples "$max_examples" \
    --include-path-regex '^/v1/(services/[^/]+/instances/[^/]+(/heartbeat)?|policy/[^/]+(/[^/]+)?)$' \
    --header "Authorization: Bearer $operator_token" || status=1

start_registry without-ca
echo "==> the CA routes of a registry without a CA (404) ($base)"
st registry/schemathesis.toml --max-examples 20 --include-path-regex '^/v1/ca/' \
    --header "Authorization: Bearer $join_token" || status=1

if ((status != 0)); then
    echo "schemathesis found failures (above); registry logs in the failing run were:" >&2
    tail -n 20 "$work"/*.log >&2
fi
exit "$status"
