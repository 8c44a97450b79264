#!/usr/bin/env bash
# Issue 2's replication figures on loopback (release build):
#
#   cargo build --release -p tribe-node && bench/replication.sh [duration]
#
# 1. Bytes on the wire per one-attribute delta: one session written sequentially on n1
#    of a 2-node async cluster; tribe_bytes_sent_total / tribe_deltas_sent_total on n1
#    (everything n1 sent, so framing, auth tags and the batched touches are included).
# 2. Replication lag in async mode: tribe_replication_lag_seconds (time a delta waited in
#    n1's queue before its socket write), p50/p99 as histogram bucket bounds; and end to
#    end (a write answered by n1, then n2 polled until it serves that value) when the
#    bench_lag example is built (cargo build --release -p tribe-node --example bench_lag).
# 3. POST /counter latency on one node, one connection, sequential (wrk -c1): sync mode
#    with 0 peers vs 2 peers, and async with 2 peers for reference.
source "$(dirname "$0")/lib.sh"
DURATION=${1:-5s}
ms() { printf "%.3f" "$(echo "$1 / 1000" | bc -l)"; }

echo "== 1, 2: one session written on n1 of 2 async nodes, ${DURATION}"
start_nodes 2 --send-mode async
b0=$(metric 0 tribe_bytes_sent_total); d0=$(metric 0 tribe_deltas_sent_total)
r=$(wrk -t1 -c1 -d"$DURATION" -s bench/counter.lua "http://127.0.0.1:${HTTP[0]}/counter" | grep '^RESULT')
b1=$(metric 0 tribe_bytes_sent_total); d1=$(metric 0 tribe_deltas_sent_total)
echo "writes: $(field requests "$r") (counter reached ~$(field requests "$r"))"
echo "bytes per delta: $(( (b1 - b0) / (d1 - d0) )) B  ($((b1 - b0)) B / $((d1 - d0)) deltas)"
echo "replication lag (queue time before the socket write): p50 <= $(histogram_quantile 0 tribe_replication_lag_seconds 0.5) s, p99 <= $(histogram_quantile 0 tribe_replication_lag_seconds 0.99) s"
LAG_BIN=target/release/examples/bench_lag
if [ -x "$LAG_BIN" ]; then
  "$LAG_BIN" "127.0.0.1:${HTTP[0]}" "127.0.0.1:${HTTP[1]}" 2000
else
  echo "(end-to-end lag: build the example: cargo build --release -p tribe-node --example bench_lag)"
fi
stop_all

echo "== 3: POST /counter, one connection, sequential, ${DURATION} each"
for setup in "sync 1" "sync 3" "async 3"; do
  set -- $setup
  start_nodes "$2" --send-mode "$1"
  wrk -t1 -c1 -d1s -s bench/counter.lua "http://127.0.0.1:${HTTP[0]}/counter" >/dev/null
  r=$(wrk -t1 -c1 -d"$DURATION" -s bench/counter.lua "http://127.0.0.1:${HTTP[0]}/counter" | grep '^RESULT')
  echo "$1 mode, $(( $2 - 1 )) peers: p50 $(ms "$(field p50_us "$r")") ms, p99 $(ms "$(field p99_us "$r")") ms, $(field rps "$r") req/s, out of sequence $(field out_of_sequence "$r")"
  stop_all
done
