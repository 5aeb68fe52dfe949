#!/usr/bin/env bash
# Builds the mesh's container images: static binaries (profile dist) once, then five FROM scratch
# images holding them (the fifth, mesh/injector, is meshctl's injection webhook for Kubernetes)
# and one with Debian's Redis, the cache; with --etcd, one more with etcd for the registry's
# highly available setup.
#
#   docker/build.sh                  # mesh/registry:dev, mesh/proxy:dev, ..., mesh/cache:dev
#   docker/build.sh --etcd           # the same and mesh/etcd:dev (for compose.ha.yaml)
#   MESH_TAG=1.2 docker/build.sh     # another tag
#
# The binaries are linked statically against glibc (crt-static), so they run in an empty
# image; mesh-probe goes into every image for the health checks. Cargo puts them under
# CARGO_TARGET_DIR when that is set, else under ./target. Redis is Debian's, dynamically
# linked: docker/redis-files.sh copies it with the libraries it links (installing the
# package when missing). etcd is its official static build, downloaded once by
# docker/etcd-binaries.sh. Images are built with the classic builder (no BuildKit
# features) from a staging directory that holds only what the images need, so the build
# context stays tens of megabytes instead of the whole target dir.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${MESH_TAG:-dev}"
triple=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-target}"
release="$target_dir/$triple/dist"
images=(registry proxy recommendations marketplace cache injector)
case ${1:-} in
    --etcd) images+=(etcd) ;;
    "") ;;
    *) echo "usage: docker/build.sh [--etcd]" >&2; exit 2 ;;
esac

say() { printf '==> %s\n' "$*"; }

say "static binaries (cargo build --profile dist --target $triple, crt-static)"
# With an explicit --target, RUSTFLAGS apply to the binaries only, not to build scripts and
# proc macros, which keep running on the host as usual.
built=$SECONDS
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile dist --target "$triple" \
    -p mesh-registry -p mesh-proxy -p recommendations -p marketplace -p meshctl
say "static binaries built in $((SECONDS - built)) s"

# A staging directory of this run's own: another build (CI, a colleague) may run at the
# same time.
mkdir -p "$target_dir"
stage=$(mktemp -d "$target_dir/docker-context.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/empty"
for bin in mesh-registry mesh-proxy mesh-probe recommendations marketplace meshctl; do
    # ldd on a missing file fails too, and would be taken for a dynamic binary.
    if [[ ! -f "$release/$bin" ]]; then
        echo "error: missing binary $release/$bin: cargo did not put it there" \
            "(CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-<unset>})" >&2
        exit 1
    fi
    # ldd exits 1 for some static binaries ("not a dynamic executable"), so its output is
    # read apart from its status.
    linkage=$(ldd "$release/$bin" 2>&1 || true)
    if ! grep -Eq 'statically linked|not a dynamic executable' <<<"$linkage"; then
        echo "error: $release/$bin is dynamically linked; a FROM scratch image cannot run it" >&2
        printf '%s\n' "$linkage" >&2
        exit 1
    fi
    cp "$release/$bin" "$stage/"
done
say "Redis (Debian's, with the libraries it links)"
bash docker/redis-files.sh "$stage/cache-fs"
if [[ " ${images[*]} " == *" etcd "* ]]; then
    say "etcd (static release build)"
    bash docker/etcd-binaries.sh "$stage"
    # etcd wants its data directory private (0700; it warns otherwise). COPY keeps the mode
    # of what it copies but makes a destination directory 0755, so the image gets the
    # directory as the content of another one.
    mkdir -p "$stage/etcd-fs"
    mkdir -m 700 "$stage/etcd-fs/etcd-data"
fi
for name in "${images[@]}"; do cp "docker/$name.Dockerfile" "$stage/"; done
command -v file >/dev/null && say "binaries are static: $(file -b "$stage/mesh-proxy" | sed "s/, BuildID.*//")"

for name in "${images[@]}"; do
    say "image mesh/$name:$tag"
    # The classic builder warns that it is deprecated on every build; show its output only
    # when the build fails.
    if ! out=$(DOCKER_BUILDKIT=0 docker build --quiet -f "$stage/$name.Dockerfile" \
        -t "mesh/$name:$tag" "$stage" 2>&1); then
        printf '%s\n' "$out" >&2
        exit 1
    fi
done

say "image sizes"
for name in "${images[@]}"; do
    docker image inspect -f '{{.Size}}' "mesh/$name:$tag" |
        awk -v n="mesh/$name:$tag" '{ printf "  %-32s %5.1f MB\n", n, $1 / 1e6 }'
done
