#!/usr/bin/env bash
# A real single-node Kubernetes 1.20 on this machine, for testing the manifests against a
# live API server and kubelet. It is built from Debian bookworm's `kubernetes` source package
# (1.20.5+really1.20.2, the newest that ships its vendored modules) and runs its pods in the
# local Docker through the kubelet's dockershim. No image is pulled: the pod sandbox is a
# `FROM scratch` image around a tiny static `pause` built here.
#
#   bash k8s/cluster.sh build    build the four binaries and the pause image once (about 10
#                                minutes on 2 cores), or reuse them from the cache
#   bash k8s/cluster.sh up       start etcd, kube-apiserver, kube-controller-manager,
#                                kube-scheduler and the kubelet; wait for the node to be
#                                Ready; print the kubeconfig to use
#   bash k8s/cluster.sh status   exit 0 when it is up, 1 when not
#   bash k8s/cluster.sh down     stop it and remove everything it left (idempotent)
#
# As a library: `source k8s/cluster.sh` only defines functions (cluster_build, cluster_up,
# cluster_down, cluster_status, cluster_kubeconfig, kc = kubectl with the cluster's
# kubeconfig) and runs nothing, nor changes the caller's shell options. The subcommands, and
# the build and start-up steps even when called as functions, run under `set -euo pipefail`.
#
# Needs root (the kubelet mounts volumes and talks to Docker), Docker, kubectl, and apt for
# the build's packages. Environment:
#   MESH_K8S_CACHE  binaries and pause image sources  (default ~/.cache/mesh/k8s-1.20)
#   MESH_K8S_RUN    state, logs, PIDs, kubeconfig     (default /tmp/mesh-k8s)
#   MESH_K8S_PAUSE_IMAGE  the pod sandbox image tag   (default local/pause:3.2)
#   MESH_K8S_KEEP_SRC=1   keep the source tree and Go build cache after a build
#   MESH_K8S_KEEP_ON_FAILURE=1  when up fails, leave the processes and logs for a look
#   MESH_K8S_GUARD_ROUTE=0      do not add the unreachable route described below
#
# Traffic stays on this machine: the API listens on 127.0.0.1, the kubelet on the docker0
# address, and pods are on the docker bridge. There is no kube-proxy, so ClusterIPs do not
# route; nothing may dial one. `up` adds an `unreachable` route for the service range so that
# a stray dial fails at once instead of following the default route off the machine. For the
# same reason the API server reaches admission webhooks (and aggregated APIs) at their
# Service's endpoints, not its ClusterIP (--enable-aggregator-routing).
# One cluster per machine: the kubelet's dockershim state (/var/lib/dockershim, the k8s_*
# containers) is machine-wide.

MESH_K8S_VERSION=v1.20.2
MESH_K8S_CACHE=${MESH_K8S_CACHE:-$HOME/.cache/mesh/k8s-1.20}
MESH_K8S_RUN=${MESH_K8S_RUN:-/tmp/mesh-k8s}
MESH_K8S_PAUSE_IMAGE=${MESH_K8S_PAUSE_IMAGE:-local/pause:3.2}
MESH_K8S_SERVICE_CIDR=10.96.0.0/16
MESH_K8S_NODE=node1
MESH_K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# The five processes, in start order (stopped in reverse).
MESH_K8S_PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)
# What the kubelet leaves on the host whatever its --root-dir.
MESH_K8S_HOST_LEFTOVERS=(/var/lib/dockershim /var/lib/kubelet /var/log/pods /var/log/containers
    /var/run/dockershim.sock)

_K8S_SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

_k8s_say() { echo "k8s: $*" >&2; }
_k8s_die() { echo "k8s: error: $*" >&2; return 1; }

# kubectl against the cluster started by cluster_up (its discovery cache in the run dir, not
# in ~/.kube).
kc() { kubectl --kubeconfig "$MESH_K8S_RUN/admin.kubeconfig" --cache-dir "$MESH_K8S_RUN/kubectl-cache" "$@"; }

cluster_kubeconfig() { echo "$MESH_K8S_RUN/admin.kubeconfig"; }

# Runs a function of this file in a new bash with `set -euo pipefail`: errexit is ignored in
# a function whose status the caller tests (`if f`, `f || ...`), so the steps that must stop
# at the first failure run in a process of their own.
_k8s_strict() {
    MESH_K8S_CACHE=$MESH_K8S_CACHE MESH_K8S_RUN=$MESH_K8S_RUN MESH_K8S_PAUSE_IMAGE=$MESH_K8S_PAUSE_IMAGE \
        MESH_K8S_KEEP_SRC=${MESH_K8S_KEEP_SRC:-0} MESH_K8S_GUARD_ROUTE=${MESH_K8S_GUARD_ROUTE:-1} \
        "$BASH" -c 'set -euo pipefail; source "$1"; shift; "$@"' mesh-k8s "$_K8S_SELF" "$@"
}

# ------------------------------------------------------------------------------------------
# build

_k8s_binaries_ok() {
    local b
    for b in "${MESH_K8S_BINARIES[@]}"; do
        [[ -x $MESH_K8S_CACHE/bin/$b ]] || return 1
        [[ $("$MESH_K8S_CACHE/bin/$b" --version 2>/dev/null) == "Kubernetes $MESH_K8S_VERSION" ]] || return 1
    done
}

_k8s_apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    _k8s_say "apt-get install ${missing[*]}"
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# The machine's own Debian source entries, as deb-src, in a private list: the system's apt
# configuration is not changed.
_k8s_write_src_list() {
    local dir=$1
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        sed -E 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$dir/src.sources"
        echo "$dir/src.sources"
    elif grep -qE '^deb ' /etc/apt/sources.list 2>/dev/null; then
        grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"$dir/src.list"
        echo "$dir/src.list"
    else
        _k8s_die "no Debian source entry found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    fi
}

_k8s_build_binaries() {
    local src=$MESH_K8S_CACHE/src
    local t0=$SECONDS
    _k8s_apt_install golang-go rsync etcd-server busybox-static golang-github-modern-go-reflect2-dev
    rm -rf "$src"
    mkdir -p "$src/lists/partial" "$MESH_K8S_CACHE/bin"
    local list apt_opts
    list=$(_k8s_write_src_list "$src")
    apt_opts=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$src/lists" -o APT::Sandbox::User=root -o DPkg::Lock::Timeout=600)
    _k8s_say "fetching Debian's kubernetes source package"
    apt-get "${apt_opts[@]}" update -qq
    (cd "$src" && apt-get "${apt_opts[@]}" source --download-only -qq kubernetes)
    local orig
    orig=$(ls "$src"/kubernetes_*.orig.tar.gz)
    _k8s_say "unpacking $(basename "$orig")"
    tar -C "$src" -xzf "$orig"
    local tree=$src/kubernetes-${MESH_K8S_VERSION#v}
    [[ -d $tree/vendor ]] || _k8s_die "$tree/vendor missing: not the source package this script expects"
    # reflect2 1.0.1 breaks with Go >= 1.18: use Debian's 1.0.2 files.
    (cd "$tree/vendor/github.com/modern-go/reflect2" && rm -f ./*.go ./*.s \
        && cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.{go,s} .)
    # Some VMs refuse negative OOM scores, which the kubelet hard-codes for sandboxes (-998)
    # and Guaranteed pods (-997): use 0.
    sed -i -E 's/(defaultSandboxOOMAdj int = )-998/\10/' "$tree/pkg/kubelet/dockershim/docker_sandbox.go"
    sed -i -E 's/(guaranteedOOMScoreAdj int = )-997/\10/' "$tree/pkg/kubelet/qos/policy.go"
    grep -q 'defaultSandboxOOMAdj int = 0' "$tree/pkg/kubelet/dockershim/docker_sandbox.go" \
        && grep -q 'guaranteedOOMScoreAdj int = 0' "$tree/pkg/kubelet/qos/policy.go" \
        || _k8s_die "the OOM score patches did not apply"
    # 1.20 builds in GOPATH mode.
    mkdir -p "$src/gopath/src/k8s.io"
    ln -s "$tree" "$src/gopath/src/k8s.io/kubernetes"
    _k8s_say "building ${MESH_K8S_BINARIES[*]} (about 10 minutes on 2 cores; log: $src/make.log)"
    (
        cd "$src/gopath/src/k8s.io/kubernetes" || exit 1
        export GOPATH=$src/gopath GOCACHE=$src/gocache \
            KUBE_GIT_VERSION=$MESH_K8S_VERSION KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
            KUBE_GIT_TREE_STATE=clean CGO_ENABLED=0
        nice -n 19 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet"
    ) >"$src/make.log" 2>&1 || { tail -40 "$src/make.log" >&2; _k8s_die "make failed (log: $src/make.log)"; }
    local b
    for b in "${MESH_K8S_BINARIES[@]}"; do
        [[ -s $tree/_output/bin/$b ]] || _k8s_die "$b was not built (log: $src/make.log)"
        install -m 0755 "$tree/_output/bin/$b" "$MESH_K8S_CACHE/bin/$b"
    done
    _k8s_binaries_ok || _k8s_die "the built binaries do not report $MESH_K8S_VERSION"
    if [[ ${MESH_K8S_KEEP_SRC:-0} == 1 ]]; then
        _k8s_say "keeping the source tree in $src"
    else
        chmod -R u+w "$src" 2>/dev/null || true
        rm -rf "$src"
    fi
    _k8s_say "built in $((SECONDS - t0)) s"
}

# The pod sandbox: a static program that sleeps until SIGINT/SIGTERM and reaps zombies.
_k8s_ensure_pause_image() {
    local dir=$MESH_K8S_CACHE/pause
    if [[ -x $dir/pause ]] && docker image inspect "$MESH_K8S_PAUSE_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir"
    cat >"$dir/pause.c" <<'EOF'
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction act = {0};
    act.sa_handler = on_term;
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    act.sa_handler = on_chld;
    act.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &act, NULL);
    for (;;) pause();
}
EOF
    cat >"$dir/Dockerfile" <<'EOF'
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
EOF
    gcc -static -Os -s -o "$dir/pause" "$dir/pause.c"
    _k8s_say "building the image $MESH_K8S_PAUSE_IMAGE"
    local out
    out=$(DOCKER_BUILDKIT=0 docker build -q -t "$MESH_K8S_PAUSE_IMAGE" "$dir" 2>&1) \
        || { echo "$out" >&2; _k8s_die "docker build of $MESH_K8S_PAUSE_IMAGE failed"; }
}

_k8s_build_locked() {
    mkdir -p "$MESH_K8S_CACHE"
    exec 9>"$MESH_K8S_CACHE/.lock"
    flock 9
    if _k8s_binaries_ok; then
        _k8s_say "reusing the $MESH_K8S_VERSION binaries in $MESH_K8S_CACHE/bin"
    else
        _k8s_build_binaries
    fi
    _k8s_ensure_pause_image
}

cluster_build() { _k8s_strict _k8s_build_locked; }

# ------------------------------------------------------------------------------------------
# processes

# A PID file holds "pid start-time" so that a recycled PID is never taken for ours.
# Field 22 of /proc/PID/stat; counted after the command name, which may hold spaces.
_k8s_starttime() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    # fields after ')' start at field 3
    set -- $stat
    echo "${20}"
}

_k8s_record_pid() { echo "$2 $(_k8s_starttime "$2")" >"$MESH_K8S_RUN/pids/$1"; }

# Prints the PID of a recorded process when it is still that process.
_k8s_live_pid() {
    local f=$MESH_K8S_RUN/pids/$1 pid start
    [[ -f $f ]] || return 1
    read -r pid start <"$f" || return 1
    [[ -n $pid && -d /proc/$pid && $(_k8s_starttime "$pid") == "$start" ]] || return 1
    echo "$pid"
}

_k8s_stop() {
    local name=$1 pid i
    pid=$(_k8s_live_pid "$name") || { rm -f "$MESH_K8S_RUN/pids/$name"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    # Up to 10 s to exit, then SIGKILL; then up to 5 s more for init to reap it.
    for ((i = 0; i < 150; i++)); do
        _k8s_live_pid "$name" >/dev/null || break
        if ((i == 100)) && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    _k8s_say "stopped $name (pid $pid)"
    rm -f "$MESH_K8S_RUN/pids/$name"
}

# Starts a process in its own session (so it outlives the caller's process group), logging
# to $MESH_K8S_RUN/logs/NAME.log, and records its PID.
_k8s_start() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$MESH_K8S_RUN/logs/$name.log" 2>&1 &
    local pid=$!
    _k8s_record_pid "$name" "$pid"
    _k8s_say "started $name (pid $pid)"
}

# _k8s_wait DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds; gives up at
# once when one of the processes started so far has exited.
_k8s_wait() {
    local what=$1 limit=$2 t0=$SECONDS next=5 f
    shift 2
    until "$@" >/dev/null 2>&1; do
        for f in "$MESH_K8S_RUN"/pids/*; do
            [[ -f $f ]] || continue
            _k8s_live_pid "${f##*/}" >/dev/null \
                || { _k8s_die "${f##*/} exited (log: $MESH_K8S_RUN/logs/${f##*/}.log)"; return 1; }
        done
        if ((SECONDS - t0 >= limit)); then
            _k8s_die "$what: not after ${limit} s"
            return 1
        fi
        if ((SECONDS - t0 >= next)); then
            _k8s_say "waiting for $what ($((SECONDS - t0)) s)"
            next=$((next + 5))
        fi
        sleep 0.5
    done
    _k8s_say "$what ($((SECONDS - t0)) s)"
}

_k8s_port_free() { [[ -z $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]; }

# _k8s_pick_port VAR BASE: a free port at or above BASE, not one picked already, into VAR.
_k8s_pick_port() {
    local p=$2
    while ! _k8s_port_free "$p" || [[ " ${_k8s_picked[*]-} " == *" $p "* ]]; do
        p=$((p + 1))
    done
    _k8s_picked+=("$p")
    printf -v "$1" %s "$p"
}

_k8s_docker0_ip() {
    ip -4 -o addr show dev docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}'
}

_k8s_write_kubeconfig() {
    local file=$1 user=$2 token=$3
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mesh-k8s
  cluster:
    server: https://127.0.0.1:$MESH_K8S_API_PORT
    insecure-skip-tls-verify: true
users:
- name: $user
  user:
    token: $token
contexts:
- name: mesh-k8s
  context:
    cluster: mesh-k8s
    user: $user
current-context: mesh-k8s
EOF
    chmod 600 "$file"
}

_k8s_node_ready() {
    [[ $(kc get node "$MESH_K8S_NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

_k8s_etcd_healthy() { curl -fsS "http://127.0.0.1:$MESH_K8S_ETCD_PORT/health" | grep -q '"health":"true"'; }
_k8s_api_ready() { kc get --raw /readyz; }

_k8s_load_ports() {
    [[ -f $MESH_K8S_RUN/ports.env ]] || return 1
    # shellcheck disable=SC1091
    source "$MESH_K8S_RUN/ports.env"
}

# Mounts the kubelet made (tmpfs for Secret volumes) under its root dir, and our own shared
# bind mount of that dir: unmounted before anything is removed.
_k8s_unmount_under() {
    local prefix=$1 m
    [[ -n $prefix ]] || return 0
    awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 {print length($5), $5}' /proc/self/mountinfo \
        | sort -rn | cut -d' ' -f2- | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || _k8s_say "could not unmount $m"
    done
}

_k8s_foreign_kubelet() {
    local pid ours
    ours=$(_k8s_live_pid kubelet 2>/dev/null || true)
    for pid in $(pgrep -x kubelet 2>/dev/null || true); do
        [[ $pid == "$ours" ]] || return 0
    done
    return 1
}

# ------------------------------------------------------------------------------------------
# up / down / status

cluster_status() {
    local name pid up=0 down=0
    for name in "${MESH_K8S_PROCS[@]}"; do
        if pid=$(_k8s_live_pid "$name"); then
            up=$((up + 1))
            echo "$name: running (pid $pid)"
        else
            down=$((down + 1))
            echo "$name: not running"
        fi
    done
    if ((up == 0)); then
        echo "cluster: down"
        return 1
    fi
    _k8s_load_ports || true
    if ((down == 0)) && _k8s_api_ready >/dev/null 2>&1 && _k8s_node_ready; then
        echo "cluster: up; node $MESH_K8S_NODE Ready; KUBECONFIG=$(cluster_kubeconfig)"
        return 0
    fi
    echo "cluster: partly up (run down, then up)"
    return 1
}

cluster_up() {
    local t0=$SECONDS
    [[ $EUID == 0 ]] || { _k8s_die "up needs root (the kubelet mounts volumes and runs pods)"; return 1; }
    if cluster_status >/dev/null 2>&1; then
        _k8s_say "already up"
        echo "KUBECONFIG=$(cluster_kubeconfig)"
        return 0
    fi
    if _k8s_foreign_kubelet; then
        _k8s_die "another kubelet runs on this machine (not started from $MESH_K8S_RUN): one cluster per machine"
        return 1
    fi
    # Leftovers of an earlier run that was not brought down.
    cluster_down >/dev/null 2>&1 || true
    cluster_build || return 1
    if ! _k8s_strict _k8s_up_inner; then
        _k8s_say "up failed; the last lines of each log:"
        local f
        for f in "$MESH_K8S_RUN"/logs/*.log; do
            [[ -f $f ]] || continue
            echo "---- $(basename "$f")" >&2
            tail -15 "$f" >&2
        done
        if [[ ${MESH_K8S_KEEP_ON_FAILURE:-0} == 1 ]]; then
            _k8s_say "left as it is (MESH_K8S_KEEP_ON_FAILURE=1): run down when done"
        else
            cluster_down >/dev/null 2>&1 || true
        fi
        return 1
    fi
    _k8s_say "up in $((SECONDS - t0)) s"
    echo "KUBECONFIG=$(cluster_kubeconfig)"
}

_k8s_up_inner() {
    local R=$MESH_K8S_RUN bin=$MESH_K8S_CACHE/bin node_ip
    node_ip=$(_k8s_docker0_ip)
    [[ -n $node_ip ]] || _k8s_die "docker0 has no IPv4 address (is Docker running?)"
    mkdir -p "$R"/{pids,logs,certs,pki,etcd,kubelet,fake}
    chmod 700 "$R"

    # Ports on 127.0.0.1 (the kubelet's API on the docker0 address), below the ephemeral range
    # and away from every default, each checked free.
    _k8s_picked=()
    _k8s_pick_port MESH_K8S_ETCD_PORT 22379
    _k8s_pick_port MESH_K8S_ETCD_PEER_PORT 22390
    _k8s_pick_port MESH_K8S_API_PORT 16443
    _k8s_pick_port MESH_K8S_CM_PORT 20257
    _k8s_pick_port MESH_K8S_SCHED_PORT 20259
    _k8s_pick_port MESH_K8S_KUBELET_PORT 20250
    _k8s_pick_port MESH_K8S_KUBELET_HEALTHZ_PORT 20248
    declare -p MESH_K8S_ETCD_PORT MESH_K8S_ETCD_PEER_PORT MESH_K8S_API_PORT MESH_K8S_CM_PORT \
        MESH_K8S_SCHED_PORT MESH_K8S_KUBELET_PORT MESH_K8S_KUBELET_HEALTHZ_PORT \
        | sed 's/^declare -- //' >"$R/ports.env"
    _k8s_say "ports: etcd $MESH_K8S_ETCD_PORT, API $MESH_K8S_API_PORT, kubelet $node_ip:$MESH_K8S_KUBELET_PORT"

    # Credentials: bearer tokens for the clients, a key pair for service-account tokens, and a
    # CA whose client certificate the apiserver shows the kubelet (exec, logs, port-forward).
    local admin_token node_token sched_token
    admin_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    node_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    sched_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat >"$R/tokens.csv" <<EOF
$admin_token,admin,admin,"system:masters"
$node_token,system:node:$MESH_K8S_NODE,$MESH_K8S_NODE,"system:nodes"
$sched_token,system:kube-scheduler,kube-scheduler
EOF
    chmod 600 "$R/tokens.csv"
    _k8s_write_kubeconfig "$R/admin.kubeconfig" admin "$admin_token"
    _k8s_write_kubeconfig "$R/kubelet.kubeconfig" "system:node:$MESH_K8S_NODE" "$node_token"
    _k8s_write_kubeconfig "$R/sched.kubeconfig" system:kube-scheduler "$sched_token"
    openssl genrsa -out "$R/sa.key" 2048 2>/dev/null
    openssl rsa -in "$R/sa.key" -pubout -out "$R/sa.pub" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=mesh-k8s-kubelet-client-ca \
        -keyout "$R/pki/ca.key" -out "$R/pki/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
        -keyout "$R/pki/apiserver-kubelet-client.key" -out "$R/pki/apiserver-kubelet-client.csr" 2>/dev/null
    openssl x509 -req -days 365 -in "$R/pki/apiserver-kubelet-client.csr" -CA "$R/pki/ca.crt" \
        -CAkey "$R/pki/ca.key" -CAcreateserial -out "$R/pki/apiserver-kubelet-client.crt" 2>/dev/null

    _k8s_start etcd etcd --name mesh-k8s --data-dir "$R/etcd" \
        --listen-client-urls "http://127.0.0.1:$MESH_K8S_ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$MESH_K8S_ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$MESH_K8S_ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$MESH_K8S_ETCD_PEER_PORT" \
        --initial-cluster "mesh-k8s=http://127.0.0.1:$MESH_K8S_ETCD_PEER_PORT"
    _k8s_wait "etcd healthy" 30 _k8s_etcd_healthy

    _k8s_start kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$MESH_K8S_ETCD_PORT" \
        --bind-address=127.0.0.1 --secure-port="$MESH_K8S_API_PORT" --insecure-port=0 \
        --advertise-address="$node_ip" --cert-dir="$R/certs" \
        --token-auth-file="$R/tokens.csv" --authorization-mode=Node,RBAC \
        --service-account-key-file="$R/sa.pub" --service-account-signing-key-file="$R/sa.key" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-cluster-ip-range="$MESH_K8S_SERVICE_CIDR" \
        --enable-admission-plugins=NodeRestriction --kubelet-preferred-address-types=InternalIP \
        --enable-aggregator-routing=true \
        --kubelet-client-certificate="$R/pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$R/pki/apiserver-kubelet-client.key"
    _k8s_wait "kube-apiserver ready" 90 _k8s_api_ready

    _k8s_start kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$R/admin.kubeconfig" --authentication-kubeconfig="$R/admin.kubeconfig" \
        --authorization-kubeconfig="$R/admin.kubeconfig" \
        --service-account-private-key-file="$R/sa.key" --root-ca-file="$R/certs/apiserver.crt" \
        --leader-elect=false --bind-address=127.0.0.1 --port=0 \
        --secure-port="$MESH_K8S_CM_PORT" --cert-dir="$R/certs/controller-manager" \
        --flex-volume-plugin-dir="$R/flexvolume" \
        --controllers='*,-nodeipam,-service,-route,-cloud-node-lifecycle'
    _k8s_start kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig="$R/sched.kubeconfig" --authentication-kubeconfig="$R/sched.kubeconfig" \
        --authorization-kubeconfig="$R/sched.kubeconfig" --leader-elect=false \
        --bind-address=127.0.0.1 --port=0 \
        --secure-port="$MESH_K8S_SCHED_PORT" --cert-dir="$R/certs/scheduler"

    # The kubelet would rewrite host sysctls: it gets a mount namespace of its own where the
    # ones that differ from what it wants are files holding its values. Its root dir is a
    # shared bind mount, so the tmpfs it mounts there for Secret volumes propagate back to the
    # host, where Docker bind-mounts them into containers.
    local binds="" f want cur
    for f in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
        kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
        want=${f#*=}
        f=${f%=*}
        [[ -f /proc/sys/$f ]] || continue
        cur=$(cat "/proc/sys/$f")
        [[ $cur == "$want" ]] && continue
        echo "$want" >"$R/fake/${f//\//_}"
        binds+="mount --bind $R/fake/${f//\//_} /proc/sys/$f && "
    done
    mount --bind "$R/kubelet" "$R/kubelet"
    mount --make-shared "$R/kubelet"
    # Our copy of /proc (and /proc/sys when it is a mount of its own) is made private first,
    # so the fake files cannot propagate to the host.
    local proc_private="mount --make-private /proc && "
    if mountpoint -q /proc/sys; then proc_private+="mount --make-private /proc/sys && "; fi
    _k8s_start kubelet unshare -m --propagation unchanged sh -c "$proc_private$binds exec $bin/kubelet \
        --kubeconfig=$R/kubelet.kubeconfig --hostname-override=$MESH_K8S_NODE \
        --node-ip=$node_ip --address=$node_ip --port=$MESH_K8S_KUBELET_PORT \
        --healthz-bind-address=127.0.0.1 --healthz-port=$MESH_K8S_KUBELET_HEALTHZ_PORT \
        --read-only-port=0 --anonymous-auth=false --client-ca-file=$R/pki/ca.crt \
        --authentication-token-webhook --authorization-mode=Webhook \
        --container-runtime=docker --pod-infra-container-image=$MESH_K8S_PAUSE_IMAGE \
        --cgroup-driver=cgroupfs --fail-swap-on=false --root-dir=$R/kubelet \
        --volume-plugin-dir=$R/kubelet/volume-plugins \
        --cgroups-per-qos=false --enforce-node-allocatable= \
        --make-iptables-util-chains=false --hairpin-mode=none --oom-score-adj=0 \
        --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
        '--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%'"

    # A stray dial of a ClusterIP fails here instead of leaving the machine.
    if [[ ${MESH_K8S_GUARD_ROUTE:-1} == 1 && -z $(ip route show "$MESH_K8S_SERVICE_CIDR") ]]; then
        ip route add unreachable "$MESH_K8S_SERVICE_CIDR" && touch "$R/route-added"
    fi

    _k8s_wait "node $MESH_K8S_NODE Ready" 120 _k8s_node_ready
    # Pods are refused until their namespace's service account exists.
    _k8s_wait "service account default/default" 30 kc -n default get serviceaccount default
    local name
    for name in "${MESH_K8S_PROCS[@]}"; do
        _k8s_live_pid "$name" >/dev/null || _k8s_die "$name exited (log: $R/logs/$name.log)"
    done
}

cluster_down() {
    local R=$MESH_K8S_RUN i name ids
    for ((i = ${#MESH_K8S_PROCS[@]} - 1; i >= 0; i--)); do
        _k8s_stop "${MESH_K8S_PROCS[i]}"
    done
    if _k8s_foreign_kubelet; then
        _k8s_say "another kubelet runs on this machine: its containers and /var/lib/dockershim are left alone"
    else
        ids=$(docker ps -a --format '{{.ID}} {{.Names}}' 2>/dev/null | awk '$2 ~ /^k8s_/ {print $1}' || true)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086
            docker rm -f $ids >/dev/null
            _k8s_say "removed $(wc -w <<<"$ids") k8s_* containers"
        fi
        _k8s_unmount_under /var/lib/kubelet
        for name in "${MESH_K8S_HOST_LEFTOVERS[@]}"; do
            [[ -e $name || -L $name ]] && rm -rf --one-file-system "$name"
        done
    fi
    if [[ -f $R/route-added ]]; then
        ip route del unreachable "$MESH_K8S_SERVICE_CIDR" 2>/dev/null || true
    fi
    if [[ -d $R ]]; then
        _k8s_unmount_under "$R"
        rm -rf --one-file-system "$R"
        _k8s_say "removed $R"
    fi
    _k8s_say "down"
}

_k8s_main() {
    set -euo pipefail
    case "${1:-}" in
        build) cluster_build ;;
        up) cluster_up ;;
        down) cluster_down ;;
        status) cluster_status ;;
        *)
            echo "usage: $0 build|up|down|status" >&2
            exit 2
            ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    _k8s_main "$@"
fi
