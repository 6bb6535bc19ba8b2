#!/usr/bin/env bash
# Cache misses per message of one pier build (the pier process only; its worker runs unprofiled):
# callgrind's cache simulation of this machine's data caches, D1 32 KiB and the core's 512 KiB L2
# as the last level. At 1000 connections pier's per-connection state no longer fits in L2, and
# these misses, not instructions or system calls, are what 1000×1 costs more than 100×1 (see
# results/2026-11-30-pipeline.md). Marginal, as bench/counts.sh: a run of one message per
# connection is measured and subtracted.
#
# Usage: bench/misses.sh LABEL PIER WORKER [TREE]   (arguments and env as bench/counts.sh;
#        MESSAGES defaults to 10000 here)
# Prints one markdown table row:
#   | label | cell | pier Ir/msg | D1 misses/msg | L2 misses/msg (of them: data reads) |
# and keeps the callgrind files in $OUT (`callgrind_annotate --show=Ir,DLmr,DLmw --sort=DLmr`
# on callgrind.PID.2 ranks the functions; subtract .1 for the marginal numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/target/release/pier-bench"
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
marginal_setup misses 10000 "$@"

PORT=$("$BENCH" port)
echo_config "$OUT/pier.rr.yaml" "$PORT" "$COMMAND" 1 "${IO_THREADS:-}"
valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=524288,8,64 --instr-atstart=no \
  --callgrind-out-file="$OUT/callgrind.%p" "$PIER" serve -c "$OUT/pier.rr.yaml" >"$OUT/server.log" 2>&1 &
SERVER=$!
wait_ready "127.0.0.1:$PORT"
callgrind_windows "127.0.0.1:$PORT" "$SERVER"
stop_server
f="$OUT/callgrind.$(cd "$OUT" && ls callgrind.*.1 | head -1 | cut -d. -f2)"
# totals: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw (the order of callgrind's `events:` line)
awk -v n="$extra" -v label="$LABEL" -v cell="${CONNS}×${DEPTH}" '
  FNR == 1 { file++ }
  /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i - 1 }
  /^totals:/ { for (i = 2; i <= NF; i++) t[file, i - 1] = $i }
  END {
    ir = t[2, col["Ir"]] - t[1, col["Ir"]]
    d1 = t[2, col["D1mr"]] + t[2, col["D1mw"]] - t[1, col["D1mr"]] - t[1, col["D1mw"]]
    lr = t[2, col["DLmr"]] - t[1, col["DLmr"]]
    lw = t[2, col["DLmw"]] - t[1, col["DLmw"]]
    printf "| %s | %s | %.0f | %.1f | %.1f (%.1f) |\n", label, cell, ir / n, d1 / n, (lr + lw) / n, lr / n
  }' "$f.1" "$f.2"
