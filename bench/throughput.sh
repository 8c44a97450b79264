#!/usr/bin/env bash
# Throughput of issue 5's workload: many clients, one session each, every request
# round-robin over 3 nodes through nginx (keepalive to the nodes), POST /counter.
#
#   cargo build --release -p tribe-node && bench/throughput.sh [duration] [connections] [threads]
#
# Runs, with the same wrk settings each time:
#   ceiling      nginx answering `return 200` itself (no node behind it)
#   async-plain  async mode, clients that drop the version cookie (no read-your-writes:
#                what a Tomcat-style async cluster gives; out-of-sequence answers expected)
#   async        async mode with read-your-writes (the default)
#   sync         sync mode
# and prints req/s, latency p50/p99, node CPU per request (utime+stime of the 3 nodes),
# answers out of sequence (counted per session in bench/counter.lua) and the share of
# requests that waited for a delta or fetched the session.
source "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
CONNS=${2:-64}
THREADS=${3:-2}
WRK=(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 5s -s bench/counter.lua)

printf '%-12s %9s %8s %8s %10s %10s %9s %8s\n' run req/s p50_ms p99_ms cpu_us/req out_of_seq waited% errors
row() { # name result cpu_us waited
  printf '%-12s %9s %8.2f %8.2f %10s %10s %9s %8s\n' "$1" "$(field rps "$2")" \
    "$(echo "$(field p50_us "$2") / 1000" | bc -l)" "$(echo "$(field p99_us "$2") / 1000" | bc -l)" \
    "$3" "$(field out_of_sequence "$2")" "$4" "$(( $(field http_errors "$2") + $(field socket_errors "$2") ))"
}

start_nginx
r=$("${WRK[@]}" "http://$NGINX_ADDR/counter" | grep '^RESULT')
row ceiling "$r" - -
stop_all

for run in async-plain async sync; do
  mode=async; args=()
  [ "$run" = sync ] && mode=sync
  [ "$run" = async-plain ] && args=(-- nover)
  start_nodes 3 --send-mode "$mode"
  start_nginx "${HTTP[@]}"
  # Warm up (connections, allocator), then measure.
  wrk -t"$THREADS" -c"$CONNS" -d2s -s bench/counter.lua "http://$NGINX_ADDR/counter" >/dev/null
  w0=$(( $(metric_sum tribe_consistency_waits_total) + $(metric_sum tribe_consistency_fetches_total) ))
  c0=$(cpu_ticks "${NODE_PIDS[@]}")
  r=$("${WRK[@]}" "http://$NGINX_ADDR/counter" "${args[@]}" | grep '^RESULT')
  c1=$(cpu_ticks "${NODE_PIDS[@]}")
  w1=$(( $(metric_sum tribe_consistency_waits_total) + $(metric_sum tribe_consistency_fetches_total) ))
  reqs=$(field requests "$r")
  cpu_us=$(( (c1 - c0) * 1000000 / CLK_TCK / reqs ))
  waited=$(echo "scale=1; 100 * ($w1 - $w0) / $reqs" | bc)
  row "$run" "$r" "$cpu_us" "$waited"
  rb=$(metric_sum tribe_rollbacks_total)
  [ "$rb" = 0 ] || echo "  !! $run: tribe_rollbacks_total = $rb"
  stop_all
done
