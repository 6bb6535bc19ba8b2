#!/usr/bin/env bash
# Wall-clock A/B of pier builds in one run: every server (1 PHP worker each) starts once, pinned
# to CPU 0, and every cell runs on each target in turn, round after round, with the load generator
# on CPU 1, so drift of the machine hits all alike. Prints a markdown table: msg/s, p50, p99 and
# server CPU per message (the server's whole process tree, from schedstat).
#
# Usage: bench/ab.sh LABEL PIER WORKER TREE [LABEL PIER WORKER TREE]...   (one or more builds)
#   WORKER: the extension (libpier.so) or `php` (pure-PHP package); TREE: the checkout whose
#   bench/php and php-client/src the worker runs. The same binary may appear twice with two
#   workers (extension and package).
# Env: CELLS ("1x1 100x1 100x16 1000x1"), ROUNDS (2), WARMUP (1), DURATION (3), SIZE (32),
#   RAW=1 adds pier-bench's raw tokio echo server (no PHP, one thread: the ceiling) as target `raw`.
#   PEERS: other "\n"-echo servers to run side by side, one per line, "LABEL COMMAND", where COMMAND
#   serves on the port written {port} (e.g. bench/peers/swoole-echo.php, bench/peers/workerman-echo.php);
#   each is pinned to CPU 0 like pier and measured over its whole process tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/target/release/pier-bench"
CELLS=${CELLS:-"1x1 100x1 100x16 1000x1"} ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-1} DURATION=${DURATION:-3} SIZE=${SIZE:-32}
OUT="$ROOT/target/bench/ab"
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[ $# -ge 4 ] && [ $(($# % 4)) -eq 0 ] || { sed -n '7,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
side_by_side_setup
start_targets "$@"
echo "| cell | build | round | msg/s | p50 µs | p99 µs | server CPU µs/msg |"
echo "|---|---|--:|--:|--:|--:|--:|"
for cell in $CELLS; do
  c=${cell%x*} d=${cell#*x}
  for round in $(seq 1 "$ROUNDS"); do
    for label in "${LABELS[@]}"; do
      json=$(pin 1 "$BENCH" load --addr "${ADDR[$label]}" -c "$c" -d "$d" -s "$SIZE" --warmup "$WARMUP" --duration "$DURATION" --watch-pid "${SERVER[$label]}")
      echo "$json" >>"$OUT/$label-$cell.jsonl"
      echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)
cpu = r["server_cpu_ns"] / 1000 / max(r["messages"], 1)
print("| %s | %s | %s | %.0f | %.0f | %.0f | %.1f |" % (sys.argv[1], sys.argv[2], sys.argv[3], r["msg_per_s"], r["p50_us"], r["p99_us"], cpu))' "$c × $d" "$label" "$round"
    done
  done
done
