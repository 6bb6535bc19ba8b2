#!/usr/bin/env bash
# Stable per-message costs of one pier build, for before/after tables on a noisy machine:
# user-space instructions (callgrind Ir) and system calls (strace -c), each per message, in the
# pier process and in its one PHP worker. Wall-clock numbers come from `pier-bench run`; these
# counts do not depend on what else the machine is doing.
#
# Usage: bench/counts.sh LABEL PIER WORKER [TREE]
#   PIER    the pier binary
#   WORKER  the extension (path to libpier.so), or `php` for the pure-PHP package
#   TREE    the checkout whose bench/php and php-client/src the worker runs (default: this one)
# Env: CONNS (1), DEPTH (1), SIZE (32), MESSAGES (20000, callgrind), STRACE_MESSAGES (4000),
#      IO_THREADS (tcp.io_threads; unset = the build's default), OUT (target/bench/counts).
# Prints one markdown table row:
#   | label | cell | pier Ir/msg | worker Ir/msg | pier syscalls/msg | worker syscalls/msg |
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LABEL=$1 PIER=$(realpath "$2") WORKER=$3 TREE=$(realpath "${4:-$ROOT}")
BENCH="$ROOT/target/release/pier-bench"
CONNS=${CONNS:-1} DEPTH=${DEPTH:-1} SIZE=${SIZE:-32}
MESSAGES=${MESSAGES:-20000} STRACE_MESSAGES=${STRACE_MESSAGES:-4000}
OUT=${OUT:-$ROOT/target/bench/counts}/$LABEL-c$CONNS-d$DEPTH
command -v valgrind >/dev/null && command -v strace >/dev/null || { echo "needs valgrind and strace" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
if [ "$WORKER" = php ]; then
  COMMAND="php $TREE/bench/php/worker-php.php 0"
else
  COMMAND="php -d extension=$(realpath "$WORKER") $TREE/bench/php/worker-ext.php 0"
fi
config() { echo_config "$OUT/pier.rr.yaml" "$1" "$COMMAND" 1 "${IO_THREADS:-}"; } # port → config file
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
SERVER=
cleanup() { [ -z "$SERVER" ] || kill -TERM "$SERVER" 2>/dev/null || true; }
trap cleanup EXIT
unset PHP_INI_SCAN_DIR
load=(-c "$CONNS" -d "$DEPTH" -s "$SIZE" --warmup 0)

# callgrind, instrumentation on only around a count-bounded load.
PORT=$("$BENCH" port)
config "$PORT"
valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
  --callgrind-out-file="$OUT/callgrind.%p" "$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/callgrind-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
"$BENCH" load --addr "127.0.0.1:$PORT" "${load[@]}" --batches 50 --duration 120 >/dev/null
PIDS=("$SERVER" $(pgrep -P "$SERVER" || true))
callgrind_control -i on "${PIDS[@]}" >/dev/null
"$BENCH" load --addr "127.0.0.1:$PORT" "${load[@]}" --batches $((MESSAGES / (CONNS * DEPTH))) --duration 900 >"$OUT/callgrind-load.json"
callgrind_control -i off "${PIDS[@]}" >/dev/null
callgrind_control -d "${PIDS[@]}" >/dev/null
kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=
measured=$(sed -E 's/.*"messages":([0-9]+).*/\1/' "$OUT/callgrind-load.json")
ir() { # callgrind file → Ir per message
  callgrind_annotate "$1" 2>/dev/null |
    awk -v n="$measured" '/PROGRAM TOTALS/ && !done {gsub(",","",$1); printf "%d", $1 / n; done = 1}'
}
PIER_IR=- PHP_IR=-
for f in "$OUT"/callgrind.*; do
  case "$f" in *.1) ;; *) [ -e "$f.1" ] && continue ;; esac
  if grep -qE '^cmd: *[^ ]*php[0-9.]* ' "$f"; then PHP_IR=$(ir "$f"); else PIER_IR=$(ir "$f"); fi
done

# strace -c on the server (all threads) and on its worker, separately.
PORT=$("$BENCH" port)
config "$PORT"
"$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/strace-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
"$BENCH" load --addr "127.0.0.1:$PORT" "${load[@]}" --batches 50 --duration 120 >/dev/null
W=$(pgrep -P "$SERVER" | head -1)
strace -c -f -o "$OUT/strace-pier.txt" -p "$SERVER" 2>/dev/null &
S1=$!
strace -c -o "$OUT/strace-worker.txt" -p "$W" 2>/dev/null &
S2=$!
sleep 1
"$BENCH" load --addr "127.0.0.1:$PORT" "${load[@]}" --batches $((STRACE_MESSAGES / (CONNS * DEPTH))) --duration 300 >"$OUT/strace-load.json"
kill -INT "$S1" "$S2"; wait "$S1" "$S2" || true
kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=
smeasured=$(sed -E 's/.*"messages":([0-9]+).*/\1/' "$OUT/strace-load.json")
calls() { awk -v n="$smeasured" '$NF == "total" { printf "%.2f", $4 / n }' "$1"; }
echo "| $LABEL | ${CONNS}×${DEPTH} | $PIER_IR | $PHP_IR | $(calls "$OUT/strace-pier.txt") | $(calls "$OUT/strace-worker.txt") |"
