#!/usr/bin/env bash
# Profiles the pier + extension row (1 PHP worker; default 1 connection, depth 1, 32 B packets:
# the fixed per-message cost) two ways, and writes target/bench/profile/summary.md:
#
# 1. callgrind: user-space instructions per message in pier and in the PHP worker, with
#    instrumentation switched on only around a count-bounded load (`pier-bench load --batches`),
#    so start-up and PHP compilation are not counted. Kernel work is invisible to it.
# 2. perf sampling on the cpu-clock software event (this VM exposes no hardware counters:
#    `perf stat -e instructions` says <not supported>): where the server's CPU time goes,
#    kernel included.
#
# Usage: bench/profile.sh   (after ./dev.sh build; env: MESSAGES, CONNS, DEPTH, SIZE)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/target/bench/profile"
BENCH="$ROOT/target/release/pier-bench"
PIER="$ROOT/target/release/pier"
EXT="$ROOT/target/release/libpier.so"
MESSAGES=${MESSAGES:-20000}
CONNS=${CONNS:-1}
DEPTH=${DEPTH:-1}
SIZE=${SIZE:-32}
for f in "$BENCH" "$PIER" "$EXT"; do [ -e "$f" ] || { echo "missing $f: run ./dev.sh build" >&2; exit 1; }; done
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"

config() { # port → config file
  cat >"$OUT/pier.rr.yaml" <<YAML
version: "3"
server:
  command: "php -d extension=$EXT $ROOT/bench/php/worker-ext.php 0"
tcp:
  servers:
    bench:
      addr: "127.0.0.1:$1"
      delimiter: "\n"
  pool:
    num_workers: 1
YAML
}

# Waits (bounded) until one round trip succeeds.
wait_ready() {
  local i
  for i in $(seq 1 240); do
    if "$BENCH" load --addr "$1" -c 1 -d 1 -s 32 --batches 1 --warmup 0 --duration 10 >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "server on $1 never answered" >&2
  return 1
}

SERVER=
cleanup() { [ -z "$SERVER" ] || kill -TERM "$SERVER" 2>/dev/null || true; }
trap cleanup EXIT

load_args=(-c "$CONNS" -d "$DEPTH" -s "$SIZE")

# --- 1. callgrind ------------------------------------------------------------------------------
PORT=$("$BENCH" port)
config "$PORT"
unset PHP_INI_SCAN_DIR
valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
  --callgrind-out-file="$OUT/callgrind.%p" "$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/callgrind-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
"$BENCH" load --addr "127.0.0.1:$PORT" "${load_args[@]}" --batches 200 --warmup 0 --duration 120 >/dev/null
PIDS=("$SERVER" $(pgrep -P "$SERVER" || true))
BATCHES=$((MESSAGES / (CONNS * DEPTH)))
callgrind_control -i on "${PIDS[@]}" >/dev/null
"$BENCH" load --addr "127.0.0.1:$PORT" "${load_args[@]}" --batches "$BATCHES" --warmup 0 --duration 600 >"$OUT/callgrind-load.json"
callgrind_control -i off "${PIDS[@]}" >/dev/null
callgrind_control -d "${PIDS[@]}" >/dev/null
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=
MEASURED=$(sed -E 's/.*"messages":([0-9]+).*/\1/' "$OUT/callgrind-load.json")

# --- 2. perf cpu-clock, native speed, pinned like the harness ----------------------------------
PORT=$("$BENCH" port)
config "$PORT"
taskset -c 0 "$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/perf-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
taskset -c 1 "$BENCH" load --addr "127.0.0.1:$PORT" "${load_args[@]}" --warmup 1 --duration 6 --watch-pid "$SERVER" >"$OUT/perf-load.json" &
LOAD=$!
sleep 2
WORKER=$(pgrep -P "$SERVER" | head -1)
perf record -q -e cpu-clock -F 4999 -a -g -o "$OUT/perf.data" -- sleep 4 2>/dev/null
wait "$LOAD"
SERVER_NATIVE=$SERVER
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=

# --- 3. system calls per message (strace counts every call exactly; slow, so fewer messages) --
STRACE_MESSAGES=${STRACE_MESSAGES:-2000}
PORT=$("$BENCH" port)
config "$PORT"
"$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/strace-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
W=$(pgrep -P "$SERVER" | head -1)
strace -c -f -o "$OUT/strace-raw.txt" -p "$SERVER" -p "$W" &
STRACE=$!
sleep 1
"$BENCH" load --addr "127.0.0.1:$PORT" "${load_args[@]}" --batches $((STRACE_MESSAGES / (CONNS * DEPTH))) --warmup 0 --duration 300 >"$OUT/strace-load.json"
kill -INT "$STRACE"
wait "$STRACE" || true
kill -TERM "$SERVER"
wait "$SERVER" || true
SERVER=
awk -v n="$STRACE_MESSAGES" 'NR<=2 {print; next} /^-/ {print; next} {printf "%s   (%.2f per message)\n", $0, $4 / n}' "$OUT/strace-raw.txt" >"$OUT/strace.txt"

# --- summary (report pipelines end in head: SIGPIPE upstream is expected) ---
set +o pipefail
# -----------------------------------------------------------------------------------
{
  echo "# Profile: pier + extension, 1 worker, c$CONNS d$DEPTH ${SIZE} B"
  echo
  echo "## callgrind: user-space instructions (Ir) per message, $MEASURED messages"
  for f in "$OUT"/callgrind.*.1; do
    [ -e "$f" ] || continue
    cmd=$(grep -m1 '^cmd:' "$f" | cut -c6-)
    total=$(callgrind_annotate "$f" 2>/dev/null | grep -m1 -E 'PROGRAM TOTALS' | awk '{gsub(",","",$1); print $1}')
    echo
    echo "### ${cmd:0:90}"
    echo
    echo "Total: $total Ir = $(( total / MEASURED )) Ir per message"
    echo
    echo '```'
    callgrind_annotate --inclusive=no --threshold=90 "$f" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '3,22p' | cut -c1-160
    echo '```'
  done
  echo
  echo "## perf (cpu-clock samples at 4999 Hz, 4 s during the load, native speed, pinned as in the harness)"
  echo
  echo "Share of the server's samples (pier pid $SERVER_NATIVE + PHP worker pid $WORKER) by process and DSO"
  echo "(\`[kernel.kallsyms]\` = system calls, wake-ups, TCP and pipe work):"
  echo
  echo '```'
  perf report -i "$OUT/perf.data" --stdio --no-children --pid "$SERVER_NATIVE,$WORKER" -g none --sort pid,dso --percentage relative 2>/dev/null | grep -E '^ +[0-9]' | head -12
  echo '```'
  for who in "pier:$SERVER_NATIVE" "PHP worker:$WORKER"; do
    echo
    echo "### ${who%%:*} (pid ${who##*:}), top symbols"
    echo
    echo '```'
    perf report -i "$OUT/perf.data" --stdio --no-children --pid "${who##*:}" --sort dso,sym --percentage relative -g none 2>/dev/null | grep -E '^ +[0-9]' | head -20 | cut -c1-150
    echo '```'
  done
  echo
  echo "## System calls per message (strace -c, $STRACE_MESSAGES messages)"
  echo
  echo '```'
  cat "$OUT/strace.txt"
  echo '```'
  echo
  echo "Load during perf: $(cat "$OUT/perf-load.json")"
} >"$OUT/summary.md"
echo "wrote $OUT/summary.md" >&2
