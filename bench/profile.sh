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
# Usage: bench/profile.sh   (after ./dev.sh build; env: MESSAGES, CONNS, DEPTH, SIZE, METRICS=1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-"$ROOT/target/bench/profile"}
BENCH=${BENCH:-"$ROOT/target/release/pier-bench"}
PIER=${PIER:-"$ROOT/target/release/pier"}
EXT=${EXT:-"$ROOT/target/release/libpier.so"}
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
  echo_config "$OUT/pier.rr.yaml" "$1" "php -d extension=$EXT $ROOT/bench/php/worker-ext.php 0"
  # METRICS=1: the same with Prometheus metrics on, to price them (instructions per message).
  if [ -n "${METRICS:-}" ]; then
    printf 'metrics:\n  address: "127.0.0.1:%s"\n' "$("$BENCH" port)" >>"$OUT/pier.rr.yaml"
  fi
}

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

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
MEASURED=$(messages "$OUT/callgrind-load.json")

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

# Sums callgrind's exclusive cost per function into categories (first matching regex wins) and
# prints "Ir/message  share  category", biggest first.  Usage: categorize FILE MESSAGES 'label|regex'...
categorize() {
  local file=$1 n=$2
  shift 2
  callgrind_annotate --inclusive=no --threshold=100 "$file" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '6,$p' |
    awk -v n="$n" -v cats="$(printf '%s\n' "$@")" '
      BEGIN {
        k = split(cats, lines, "\n")
        for (i = 1; i <= k; i++) if (lines[i] != "") { split(lines[i], p, "|"); label[++m] = p[1]; re[m] = p[2] }
      }
      /^ *[0-9,]+ / {
        ir = $1; gsub(",", "", ir); hit = "other"
        for (i = 1; i <= m; i++) if ($0 ~ re[i]) { hit = label[i]; break }
        sum[hit] += ir; total += ir
      }
      END { for (c in sum) printf "%8d\t%5.1f %%\t%s\n", sum[c] / n, 100 * sum[c] / total, c }' |
    sort -rn | awk -F'\t' '{ printf "%8s Ir/msg  %s  %s\n", $1, $2, $3 }'
}
PIER_CATS=(
  'event context JSON encoding|json|encode_event'
  'tracing spans (per-event span enter/exit)|tracing'
  'worker pool channel (async-channel, event-listener)|event_listener|async_channel|concurrent_queue'
  'tokio multi-thread scheduler stats (EWMA: pow, int→float)|pow|floattidf|floatundidf|libm'
  'goridge frame + CRC32|crc32|frame::'
  'tokio runtime: scheduler, I/O readiness, timers, clock|tokio|mio::|Timespec|clock_gettime|vdso|parking_lot'
  'memory: memcpy, malloc/free|memcpy|memmove|memset|malloc|free|realloc|_int_|alloc::'
  'pier connection/pool logic|pier_server|pier::'
  'libc system-call wrappers and the rest of libc|libc.so'
)
PHP_CATS=(
  'event context JSON decoding + UTF-8 validation|serde_json|from_utf8|TcpEvent::decode'
  'goridge frame + CRC32|crc32|frame::|read_frame|encode_reply'
  'ext-php-rs glue: zvals, objects, strings, try/catch|ext_php_rs|zend_string|setjmp|tls_get_addr'
  'PHP VM: interpreter, allocator, objects|php8.2'
  'pier extension logic (session, relay)|pier::'
  'memory: memcpy, malloc/free|memcpy|memmove|memset|malloc|free|realloc'
  'libc|libc.so'
)

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
    echo "By category:"
    echo
    echo '```'
    if [[ $cmd == *php* ]]; then categorize "$f" "$MEASURED" "${PHP_CATS[@]}"; else categorize "$f" "$MEASURED" "${PIER_CATS[@]}"; fi
    echo '```'
    echo
    echo "Top functions (exclusive):"
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
