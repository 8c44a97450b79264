#!/usr/bin/env bash
# Throughput of issue 5's workload: many clients, one session each, every request
# round-robin over 3 nodes through nginx (keepalive to the nodes), POST /counter.
#
#   cargo build --release -p tribe-node && bench/throughput.sh [duration] [connections] [threads]
#   REPEAT=3 bench/throughput.sh 10s 64 2     # interleaved repetitions, then medians
#
# Runs, with the same wrk settings each time:
#   ceiling      nginx answering `return 200` itself (no node behind it)
#   async-plain  async mode, clients that drop the version cookie (no read-your-writes:
#                what a Tomcat-style async cluster gives; out-of-sequence answers expected)
#   async        async mode with read-your-writes (the default)
#   sync         sync mode
# and prints req/s, latency p50/p99, node CPU per request (utime+stime of the 3 nodes),
# answers out of sequence (counted per session in bench/counter.lua), the share of
# requests that waited for a delta or fetched the session, and their mean wait.
source "$(dirname "$0")/lib.sh"
DURATION=${1:-10s}
CONNS=${2:-64}
THREADS=${3:-2}
REPEAT=${REPEAT:-1}
WRK=(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 5s -s bench/counter.lua)
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

ROWS="$WORK/rows"
printf '%-12s %9s %8s %8s %10s %10s %8s %8s %7s\n' run req/s p50_ms p99_ms cpu_us/req out_of_seq waited% wait_ms errors
row() { # name result cpu_us waited wait_ms
  printf '%-12s %9s %8.2f %8.2f %10s %10s %8s %8s %7s\n' "$1" "$(field rps "$2")" \
    "$(echo "$(field p50_us "$2") / 1000" | bc -l)" "$(echo "$(field p99_us "$2") / 1000" | bc -l)" \
    "$3" "$(field out_of_sequence "$2")" "$4" "$5" \
    "$(( $(field http_errors "$2") + $(field socket_errors "$2") ))" | tee -a "$ROWS"
}

for rep in $(seq 1 "$REPEAT"); do
  start_nginx
  r=$("${WRK[@]}" "http://$NGINX_ADDR/counter" | grep '^RESULT')
  row ceiling "$r" - - -
  stop_all

  for run in async-plain async sync; do
    mode=async; args=()
    [ "$run" = sync ] && mode=sync
    [ "$run" = async-plain ] && args=(-- nover)
    start_nodes 3 --send-mode "$mode"
    start_nginx "${HTTP[@]}"
    # Warm up (connections, allocator), then measure.
    wrk -t"$THREADS" -c"$CONNS" -d2s -s bench/counter.lua "http://$NGINX_ADDR/counter" "${args[@]}" >/dev/null
    w0=$(( $(metric_sum tribe_consistency_waits_total) + $(metric_sum tribe_consistency_fetches_total) ))
    s0=$(metric_sum_f tribe_consistency_wait_seconds_sum); n0=$(metric_sum tribe_consistency_wait_seconds_count)
    c0=$(cpu_ticks "${NODE_PIDS[@]}")
    r=$("${WRK[@]}" "http://$NGINX_ADDR/counter" "${args[@]}" | grep '^RESULT')
    c1=$(cpu_ticks "${NODE_PIDS[@]}")
    w1=$(( $(metric_sum tribe_consistency_waits_total) + $(metric_sum tribe_consistency_fetches_total) ))
    s1=$(metric_sum_f tribe_consistency_wait_seconds_sum); n1=$(metric_sum tribe_consistency_wait_seconds_count)
    reqs=$(field requests "$r")
    cpu_us=$(( (c1 - c0) * 1000000 / CLK_TCK / reqs ))
    waited=$(echo "scale=1; 100 * ($w1 - $w0) / $reqs" | bc)
    wait_ms=-
    [ "$n1" -gt "$n0" ] && wait_ms=$(printf '%.2f' "$(echo "1000 * ($s1 - $s0) / ($n1 - $n0)" | bc -l)")
    row "$run" "$r" "$cpu_us" "$waited" "$wait_ms"
    rb=$(metric_sum tribe_rollbacks_total)
    [ "$rb" = 0 ] || echo "  !! $run: tribe_rollbacks_total = $rb"
    stop_all
  done
done

if [ "$REPEAT" -gt 1 ]; then
  echo "medians of $REPEAT runs:"
  for run in ceiling async-plain async sync; do
    med() { awk -v r="$run" -v c="$1" '$1 == r { print $c }' "$ROWS" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    printf '%-12s %9s req/s  p50 %s ms  p99 %s ms  cpu %s us/req  waited %s%%\n' "$run" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)" "$(med 7)"
  done
fi
