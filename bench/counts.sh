#!/usr/bin/env bash
# Stable per-message costs of one pier build, for before/after tables on a noisy machine:
# user-space instructions (callgrind Ir) and system calls (strace -c), each per message, in the
# pier process and in its one PHP worker. Wall-clock numbers come from `pier-bench run`; these
# counts do not depend on what else the machine is doing.
#
# Per message means the marginal cost: each count is also taken over a run of one batch per
# connection (its connect, CONNECTED, one message, CLOSE, the accept) and subtracted, so that
# setting up the connections inside the window does not count as work per message. At 1000×1
# with 4 messages per connection, connects were more than half of the system calls in the window.
#
# Usage: bench/counts.sh LABEL PIER WORKER [TREE]
#   PIER    the pier binary
#   WORKER  the extension (path to libpier.so), or `php` for the pure-PHP package
#   TREE    the checkout whose bench/php and php-client/src the worker runs (default: this one)
# Env: CONNS (1), DEPTH (1), SIZE (32), MESSAGES (20000, callgrind), STRACE_MESSAGES (4000),
#      IO_THREADS (tcp.io_threads; unset = the build's default), POOL_KEYS / SERVER_KEYS (config
#      keys under tcp.pool / the server, see bench/lib.sh), LOAD_ARGS (more options of every
#      `pier-bench load`, e.g. "--tls-ca cert.pem" with SERVER_KEYS naming the server's tls.cert
#      and tls.key), OUT (target/bench/counts).
# Prints one markdown table row:
#   | label | cell | pier Ir/msg | worker Ir/msg | pier syscalls/msg | worker syscalls/msg |
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/target/release/pier-bench"
STRACE_MESSAGES=${STRACE_MESSAGES:-4000}
command -v valgrind >/dev/null && command -v strace >/dev/null || { echo "needs valgrind and strace" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
marginal_setup counts 20000 "$@"
config() { echo_config "$OUT/pier.rr.yaml" "$1" "$COMMAND" 1 "${IO_THREADS:-}"; } # port → config file

# callgrind, instrumentation on only around a count-bounded load.
PORT=$("$BENCH" port)
config "$PORT"
valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
  --callgrind-out-file="$OUT/callgrind.%p" "$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/callgrind-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
PIDS=("$SERVER" $(pgrep -P "$SERVER" || true))
callgrind_windows "127.0.0.1:$PORT" "${PIDS[@]}"
stop_server
ir() { # callgrind output of a process → marginal Ir per message (part 2 − part 1)
  local t1 t2
  t1=$(sed -n 's/^totals: //p' "$1.1") t2=$(sed -n 's/^totals: //p' "$1.2")
  echo $(((t2 - t1) / extra))
}
PIER_IR=- PHP_IR=-
for f in "$OUT"/callgrind.*.1; do
  f=${f%.1}
  if grep -qE '^cmd: *[^ ]*php[0-9.]* ' "$f.1"; then PHP_IR=$(ir "$f"); else PIER_IR=$(ir "$f"); fi
done

# strace -c on the server (all threads) and on its worker, separately.
PORT=$("$BENCH" port)
config "$PORT"
"$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/strace-server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
"$BENCH" load --addr "127.0.0.1:$PORT" "${load[@]}" --batches 50 --duration 120 >/dev/null
W=$(pgrep -P "$SERVER" | head -1)
# strace_run NAME BATCHES: counts of pier (all threads) and of its worker, separately, over a load.
strace_run() {
  strace -c -f -o "$OUT/strace-pier-$1.txt" -p "$SERVER" 2>/dev/null &
  local s1=$!
  strace -c -o "$OUT/strace-worker-$1.txt" -p "$W" 2>/dev/null &
  local s2=$!
  sleep 1
  "$BENCH" load --addr "127.0.0.1:$PORT" "${load[@]}" --batches "$2" --duration 300 >"$OUT/strace-$1.json"
  kill -INT "$s1" "$s2"
  wait "$s1" "$s2" || true
}
strace_run connect 1
strace_run load $((STRACE_MESSAGES / (CONNS * DEPTH)))
stop_server
sextra=$(($(messages "$OUT/strace-load.json") - $(messages "$OUT/strace-connect.json")))
total() { awk '$NF == "total" { print $4 }' "$1"; }
calls() { # who → marginal system calls per message
  awk -v a="$(total "$OUT/strace-$1-load.txt")" -v b="$(total "$OUT/strace-$1-connect.txt")" -v n="$sextra" \
    'BEGIN { printf "%.2f", (a - b) / n }'
}
echo "| $LABEL | ${CONNS}×${DEPTH} | $PIER_IR | $PHP_IR | $(calls pier) | $(calls worker) |"
