# Shell pieces shared by run.sh and instructions.sh, which source this file.

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
