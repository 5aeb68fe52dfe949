#!/usr/bin/env bash
# Lays out Debian's redis-server and redis-cli, with exactly the shared libraries they link,
# as a root filesystem in a directory, for the mesh/cache image (docker/build.sh calls it
# with a directory in its staging directory).
#
#   docker/redis-files.sh DIR        # DIR/redis-server, DIR/redis-cli, DIR/lib/..., DIR/lib64/...
#
# No image can be pulled here and Debian's Redis is linked dynamically, so the image is
# the two binaries and every library `ldd` lists, each at the path the loader finds it by
# (as docker/prometheus-standin.sh does for Prometheus, which needs only glibc). Installs
# Debian's redis-server package first when it is missing (needs root and apt).
set -euo pipefail
out=${1:?usage: docker/redis-files.sh DIR}

if [[ ! -x /usr/bin/redis-server || ! -x /usr/bin/redis-cli ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "error: Debian's redis-server package is needed for the mesh/cache image:" >&2
        echo "       sudo apt-get install --no-install-recommends redis-server" >&2
        exit 1
    fi
    echo "  installing Debian's redis-server package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

mkdir -p "$out"
# redis-server is a link to redis-check-rdb, one binary that picks its part by the name
# it runs under: the copy must be called redis-server.
cp -L /usr/bin/redis-server "$out/redis-server"
cp -L /usr/bin/redis-cli "$out/redis-cli"

# `name => /path (address)` for a library, `/path (address)` for the loader; the vDSO has
# no file. A library ldd cannot find would fail only when the container starts: stop here.
for bin in /usr/bin/redis-server /usr/bin/redis-cli; do
    linkage=$(ldd "$bin")
    if grep -q 'not found' <<<"$linkage"; then
        echo "error: $bin links a library ldd cannot find:" >&2
        printf '%s\n' "$linkage" >&2
        exit 1
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$linkage"
done | sort -u | while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done
