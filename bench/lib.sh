# Shared helpers of the benchmark scripts (sourced). Starts release-build nodes and nginx
# on free loopback ports and kills everything it started on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${TRIBE_NODE_BIN:-target/release/tribe-node}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p tribe-node" >&2; exit 1; }
command -v wrk >/dev/null || { echo "install wrk: apt-get install -y wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "install nginx: scripts/install-test-deps" >&2; exit 1; }
WORK=$(mktemp -d /tmp/tribe-bench.XXXXXX)
PIDS=()
NGINX_PID=

cleanup() {
  [ -n "$NGINX_PID" ] && kill -TERM "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_nodes N FLAGS...: starts nodes n1..nN (static peers), sets HTTP[], ADMIN[], PIDS[];
# waits until each is ready and sees N-1 members. Free ports are only free when probed:
# if another process takes one first, a node fails to bind, and all N start again on
# new ports (3 attempts).
start_nodes() {
  local n=$1; shift
  for attempt in 1 2 3; do
    HTTP=(); ADMIN=(); REPL=(); NODE_PIDS=()
    for i in $(seq 1 "$n"); do HTTP+=("$(free_port)"); ADMIN+=("$(free_port)"); REPL+=("$(free_port)"); done
    for i in $(seq 0 $((n - 1))); do spawn_node "$i" "$n" "$@"; done
    local ok=1
    for i in $(seq 0 $((n - 1))); do wait_ready "$i" "$n" || { ok=0; break; }; done
    [ "$ok" = 1 ] && return 0
    for p in "${NODE_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    echo "(attempt $attempt: a node did not start; retrying on other ports)" >&2
  done
  exit 1
}

# spawn_node I N FLAGS...: node n(I+1) with every other of the N nodes as a static peer.
spawn_node() {
  local i=$1 n=$2; shift 2
  local peers=""
  for j in $(seq 0 $((n - 1))); do [ "$j" = "$i" ] || peers+="${peers:+,}127.0.0.1:${REPL[$j]}"; done
  RUST_LOG=${RUST_LOG:-warn} "$BIN" --node-id "n$((i + 1))" --insecure --membership static \
    ${peers:+--peers "$peers"} --http-addr "127.0.0.1:${HTTP[$i]}" \
    --admin-addr "127.0.0.1:${ADMIN[$i]}" --replication-addr "127.0.0.1:${REPL[$i]}" \
    --advertise-addr "127.0.0.1:${REPL[$i]}" "$@" >"$WORK/n$((i + 1)).log" 2>&1 &
  NODE_PIDS[$i]=$!
  PIDS+=($!)
}

# wait_ready I N: /readyz is 200 and /cluster lists N-1 alive members (bounded: 30 s);
# returns 1 (with the node's log) if it exits or times out.
wait_ready() {
  local i=$1 n=$2
  for _ in $(seq 1 3000); do
    if curl -sf "http://127.0.0.1:${ADMIN[$i]}/readyz" >/dev/null &&
       [ "$(curl -sf "http://127.0.0.1:${ADMIN[$i]}/cluster" | grep -o '"state":"alive"' | wc -l)" -ge $((n - 1)) ]; then
      return 0
    fi
    kill -0 "${NODE_PIDS[$i]}" 2>/dev/null || break
    sleep 0.01
  done
  echo "node n$((i + 1)) not ready; log:" >&2; tail -5 "$WORK/n$((i + 1)).log" >&2; return 1
}

# metric I NAME: sum of the samples of family NAME (exact series name) on node I.
metric() {
  curl -sf "http://127.0.0.1:${ADMIN[$1]}/metrics" |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }'
}

# metric_f I NAME: like metric, as a float.
metric_f() {
  curl -sf "http://127.0.0.1:${ADMIN[$1]}/metrics" |
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.6f\n", s }'
}

# metric_sum_f NAME: metric_f summed over all started nodes.
metric_sum_f() {
  local s=0
  for i in "${!ADMIN[@]}"; do s=$(echo "$s + $(metric_f "$i" "$1")" | bc -l); done
  echo "$s"
}

# metric_sum NAME: the sum over all started nodes.
metric_sum() {
  local s=0
  for i in "${!ADMIN[@]}"; do s=$((s + $(metric "$i" "$1"))); done
  echo "$s"
}

# histogram_quantile I NAME Q: the upper bound of the bucket holding quantile Q.
histogram_quantile() {
  curl -sf "http://127.0.0.1:${ADMIN[$1]}/metrics" | awk -v n="$2_bucket" -v q="$3" '
    index($1, n "{") == 1 { match($1, /le="[^"]+"/); le = substr($1, RSTART + 4, RLENGTH - 5);
      les[++k] = le; cnt[k] = $NF }
    END { total = cnt[k]; if (total == 0) { print "n/a"; exit }
      for (i = 1; i <= k; i++) if (cnt[i] >= q * total) { print les[i]; exit } }'
}

# cpu_ticks PID...: utime + stime (clock ticks) summed over the processes.
cpu_ticks() {
  local t=0
  for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}
CLK_TCK=$(getconf CLK_TCK)

# start_nginx PORT...: round-robin over the given upstream ports (keepalive); sets
# NGINX_ADDR. start_nginx with no port: `return 200` (the proxy's own ceiling).
start_nginx() {
  local dir="$WORK/nginx" port
  mkdir -p "$dir"; port=$(free_port)
  local upstream="" location
  if [ $# -gt 0 ]; then
    upstream="upstream tribe {"
    for p in "$@"; do upstream+=" server 127.0.0.1:$p max_fails=0;"; done
    upstream+=" keepalive 64; }"
    location='proxy_pass http://tribe; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_next_upstream off;'
  else
    location="default_type application/json; return 200 '{\"counter\":0}';"
  fi
  cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes ${NGINX_WORKERS:-1};
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy; fastcgi_temp_path $dir/fcgi;
  uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  $upstream
  server { listen 127.0.0.1:$port; location / { $location } }
}
CONF
  [ -n "$NGINX_PID" ] && { kill -TERM "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; }
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' &
  NGINX_PID=$!
  NGINX_ADDR="127.0.0.1:$port"
  for _ in $(seq 1 500); do curl -s -o /dev/null "http://$NGINX_ADDR/" && return 0; sleep 0.01; done
  echo "nginx did not start:" >&2; cat "$dir/error.log" >&2; exit 1
}

stop_all() {
  [ -n "$NGINX_PID" ] && { kill -TERM "$NGINX_PID" 2>/dev/null; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=; }
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# field NAME LINE: the value of NAME=... in a RESULT line.
field() { echo "$2" | grep -o "$1=[^ ]*" | cut -d= -f2; }
