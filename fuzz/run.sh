#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/fuzz_targets/ for a bounded time, and fails if any
# of them crashes (the input that did is kept in fuzz/artifacts/<target>/).
#
#   bash fuzz/run.sh [SECONDS]      # per target, default 60
#
# Installs cargo-fuzz from crates.io when missing. New inputs found go to
# fuzz/corpus/<target>/ (not committed); fuzz/seeds/<target>/ and fuzz/dicts/<target>.dict
# are used when present.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash fuzz/run.sh [SECONDS]  (a whole number of seconds per target)" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (sanitizers). Use the nightly toolchain where rustup
# has one; otherwise let the installed compiler accept them, since no other toolchain can
# be fetched here.
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    echo "no nightly toolchain: building with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
fi
fuzz() { cargo "${toolchain[@]}" fuzz "$@"; }

mapfile -t targets < <(fuzz list)
if ((${#targets[@]} == 0)); then
    echo "error: no fuzz targets in fuzz/fuzz_targets/" >&2
    exit 1
fi
fuzz build

failed=()
for target in "${targets[@]}"; do
    echo "==> $target for ${seconds}s"
    mkdir -p "corpus/$target"
    inputs=("corpus/$target")
    [[ -d seeds/$target ]] && inputs+=("seeds/$target")
    options=(-max_total_time="$seconds" -print_final_stats=1)
    [[ -f dicts/$target.dict ]] && options+=(-dict="dicts/$target.dict")
    fuzz run "$target" "${inputs[@]}" -- "${options[@]}" || failed+=("$target")
done

if ((${#failed[@]} > 0)); then
    echo "error: crashes in ${failed[*]}; inputs in fuzz/artifacts/, replay one with" \
        "'cargo +nightly fuzz run <target> <file>'" >&2
    exit 1
fi
echo "fuzzing: ${#targets[@]} target(s), ${seconds}s each, no crash"
