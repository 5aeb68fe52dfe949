#!/usr/bin/env bash
# Builds a local stand-in for the prom/prometheus image, for machines that cannot pull
# images: Debian's prometheus binary, the two libraries it links (glibc and its loader)
# and its web UI files, in an empty image laid out like the official one.
#
#   docker/prometheus-standin.sh IMAGE      # e.g. mesh/prometheus-standin:dev
#
# Installs Debian's prometheus package first when it is missing (needs root and apt). Its
# UI is Prometheus' classic one: http://127.0.0.1:9090/classic/targets.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:?usage: docker/prometheus-standin.sh IMAGE}

if [[ ! -x /usr/bin/prometheus || ! -d /usr/share/prometheus/web ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "error: Debian's prometheus package is needed to build $image:" >&2
        echo "       sudo apt-get install --no-install-recommends prometheus" >&2
        exit 1
    fi
    echo "installing Debian's prometheus package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/empty"
cp -L /usr/bin/prometheus /lib/x86_64-linux-gnu/libc.so.6 /lib64/ld-linux-x86-64.so.2 \
    docker/prometheus-standin.Dockerfile "$context/"
cp -r /usr/share/prometheus/web "$context/web"
DOCKER_BUILDKIT=0 docker build --quiet -f "$context/prometheus-standin.Dockerfile" \
    -t "$image" "$context" >/dev/null
docker image inspect -f '{{.Size}}' "$image" |
    awk -v n="$image" '{ printf "  %-32s %5.1f MB\n", n, $1 / 1e6 }'
