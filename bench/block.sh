#!/usr/bin/env bash
# The blocking row (every worker busy: the handler blocks BLOCK_US per packet, CONNS connections,
# depth 1, 32 B) for the raw server and for one or more pier binaries, in one run: every target is
# started once, then RUNS rounds go target after target, so drift of a shared machine hits all
# targets alike. Prints one line per target with the medians over the rounds (msg/s, p50, p99,
# p999) and p99 ÷ raw's p99 for the same worker count; every load report is kept in $OUT.
#
# Usage: bench/block.sh [LABEL=/path/to/pier ...]   (default: now=target/release/pier)
# Env: RUNS (5), WORKERS ("1 2"), CONNS (100), BLOCK_US (1000), WARMUP (1), DURATION (3),
#      EXT (target/release/libpier.so), BENCH (target/release/pier-bench), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-"$ROOT/target/bench/block"}
BENCH=${BENCH:-"$ROOT/target/release/pier-bench"}
EXT=${EXT:-"$ROOT/target/release/libpier.so"}
RUNS=${RUNS:-5}
WORKERS=${WORKERS:-"1 2"}
CONNS=${CONNS:-100}
BLOCK_US=${BLOCK_US:-1000}
WARMUP=${WARMUP:-1}
DURATION=${DURATION:-3}
[ $# -gt 0 ] || set -- "now=$ROOT/target/release/pier"
for f in "$BENCH" "$EXT" "${@#*=}"; do [ -e "$f" ] || { echo "missing $f" >&2; exit 1; }; done
rm -rf "$OUT"
mkdir -p "$OUT"

# Servers on CPU 0, the load generator on CPU 1, as the harness pins them.
SERVER_CPU=() CLIENT_CPU=()
if [ "$(nproc)" -ge 2 ]; then SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1); fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# target name → address, pid
declare -A ADDR PID
NAMES=()
start() { # name, command...
  local name=$1
  shift
  "${SERVER_CPU[@]}" "$@" >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=("$!")
  NAMES+=("$name")
}
for w in $WORKERS; do
  port=$("$BENCH" port)
  ADDR[raw-x$w]="127.0.0.1:$port"
  start "raw-x$w" "$BENCH" echo --addr "127.0.0.1:$port" --threads "$w" --block-us "$BLOCK_US"
  for target in "$@"; do
    label=${target%%=*} pier=${target#*=}
    port=$("$BENCH" port)
    name="$label-x$w"
    ADDR[$name]="127.0.0.1:$port"
    echo_config "$OUT/$name.rr.yaml" "$port" "php -d extension=$EXT $ROOT/bench/php/worker-ext.php $BLOCK_US" "$w"
    start "$name" "$pier" serve -c "$OUT/$name.rr.yaml"
  done
done
for name in "${NAMES[@]}"; do wait_ready "${ADDR[$name]}" "$OUT/$name.log"; done

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/loadavg.txt" >&2
for run in $(seq 1 "$RUNS"); do
  for name in "${NAMES[@]}"; do
    "${CLIENT_CPU[@]}" "$BENCH" load --addr "${ADDR[$name]}" --watch-pid "${PID[$name]}" \
      -c "$CONNS" -d 1 -s 32 --warmup "$WARMUP" --duration "$DURATION" >"$OUT/$name.$run.json"
    echo "run $run $name: $(jq -c '{msg_per_s, p99_us}' "$OUT/$name.$run.json" 2>/dev/null || cat "$OUT/$name.$run.json")" >&2
    sleep 0.5
  done
  echo "load average after run $run: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/loadavg.txt" >&2
done

# Medians per target, and p99 against raw's with the same worker count.
median() { sort -n | awk '{v[NR] = $1} END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { for run in $(seq 1 "$RUNS"); do jq -r ".$2" "$OUT/$1.$run.json"; done | median; }
{
  echo "| target | runs | msg/s | p50 ms | p99 ms | p999 ms | p99 ÷ raw p99 | p99 per run (ms) |"
  echo "|---|--:|--:|--:|--:|--:|--:|---|"
  for name in "${NAMES[@]}"; do
    w=${name##*-x}
    p99=$(field "$name" p99_us)
    raw=$(field "raw-x$w" p99_us)
    runs=$(for run in $(seq 1 "$RUNS"); do jq -r '.p99_us / 1000 | . * 10 | round / 10' "$OUT/$name.$run.json"; done | paste -sd' ')
    printf '| %s | %s | %.0f | %.1f | %.1f | %.1f | %.2f | %s |\n' "$name" "$RUNS" \
      "$(field "$name" msg_per_s)" "$(echo "$(field "$name" p50_us) / 1000" | bc -l)" \
      "$(echo "$p99 / 1000" | bc -l)" "$(echo "$(field "$name" p999_us) / 1000" | bc -l)" \
      "$(echo "$p99 / $raw" | bc -l)" "$runs"
  done
} | tee "$OUT/summary.md"
