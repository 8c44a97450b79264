#!/usr/bin/env bash
# Join-time state transfer of many sessions (issue 2; target: 100,000 sessions of 1 KB in
# <= 2 s), and the memory a node holding them uses.
#
#   cargo build --release -p tribe-node && bench/transfer.sh [sessions] [value bytes]
#
# Seeds a 2-node async cluster with PUT /attrs/data (a JSON string of the given size,
# one new session per request, wrk over 32 connections to n1), then starts n3 and
# reports: time from its start to /readyz 200, tribe_state_transfer_seconds, sessions it
# received, and VmRSS of n3 and of n1.
source "$(dirname "$0")/lib.sh"
SESSIONS=${1:-100000}
SIZE=${2:-1024}
THREADS=2

HTTP=(); ADMIN=(); REPL=(); NODE_PIDS=()
for i in 1 2 3; do HTTP+=("$(free_port)"); ADMIN+=("$(free_port)"); REPL+=("$(free_port)"); done
spawn_node 0 3; spawn_node 1 3
wait_ready 0 2; wait_ready 1 2
rss() { awk '/^VmRSS/ { printf "%.0f MB", $2 / 1024 }' "/proc/$1/status"; }
echo "idle node RSS: $(rss "${NODE_PIDS[0]}")"

sessions_on() { curl -sf "http://127.0.0.1:${ADMIN[$1]}/cluster" | grep -o '"sessions":[0-9]*' | cut -d: -f2; }
t0=$(date +%s.%N)
# wrk runs for a fixed time; each thread stops its loop after its share, and SIGINT ends
# wrk (with its report) once n1 holds them all.
wrk -t$THREADS -c32 -d600s --timeout 10s -s bench/counter.lua "http://127.0.0.1:${HTTP[0]}/" \
  -- put="$SIZE" stop=$(( (SESSIONS + THREADS - 1) / THREADS )) >"$WORK/seed" &
WRK_PID=$!
until [ "$(sessions_on 0)" -ge "$SESSIONS" ]; do sleep 0.2; done
kill -INT "$WRK_PID"; wait "$WRK_PID" || true
t1=$(date +%s.%N)
for _ in $(seq 1 1000); do # n2 applies the last deltas
  held=$(sessions_on 1); [ "$held" -ge "$SESSIONS" ] && break; sleep 0.01
done
seed=$(grep '^RESULT' "$WORK/seed")
printf 'seeded %s sessions of %s B in %.1f s (%s req/s; %s errors); n2 holds %s\n' \
  "$(sessions_on 0)" "$SIZE" "$(echo "$t1 - $t0" | bc)" "$(field rps "$seed")" \
  "$(field http_errors "$seed")" "$held"

echo "RSS before the join: n1 $(rss "${NODE_PIDS[0]}"), n2 $(rss "${NODE_PIDS[1]}")"
start=$(date +%s%N)
spawn_node 2 3
for _ in $(seq 1 6000); do
  curl -sf -o /dev/null "http://127.0.0.1:${ADMIN[2]}/readyz" && break
  kill -0 "${NODE_PIDS[2]}" || { tail -30 "$WORK/n3.log"; exit 1; }
  sleep 0.005
done
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
got=$(sessions_on 2)
transfer=$(curl -sf "http://127.0.0.1:${ADMIN[2]}/metrics" | awk '$1 == "tribe_state_transfer_seconds" { print $2 }')
echo "n3: ready ${ready_ms} ms after start; tribe_state_transfer_seconds ${transfer}; holds ${got} sessions"
echo "RSS holding them: n3 (state transfer) $(rss "${NODE_PIDS[2]}"), n2 (deltas) $(rss "${NODE_PIDS[1]}"), n1 (served the PUTs) $(rss "${NODE_PIDS[0]}")"
