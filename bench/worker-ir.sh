#!/usr/bin/env bash
# Instructions (callgrind Ir) per message of the bench worker alone, with no pier process: it is
# driven over its pipe relay by bench/php/relay-driver.php, which writes DATA events as pier would.
# For ablations of the worker's code (a run takes seconds where counts.sh takes minutes); counts.sh
# measures the worker under a real pier and agrees with it (1×1: 10,926 and 10,928 Ir).
#
# Per message means the marginal cost: a run of EVENTS minus a run of EVENTS/10, divided by the
# difference, so that PHP's start-up and the script's compilation do not count.
#
# Usage: bench/worker-ir.sh WORKER [TREE]
#   WORKER  `php` for the pure-PHP package, or the extension (path to libpier.so)
#   TREE    the checkout whose bench/php and php-client/src the worker runs (default: this one)
# Env: BATCH (1: one event per read, the 1×1 pattern), CONNS (1: connections the events rotate
#      over), SIZES (1: line lengths each connection's events cycle through), EVENTS (20000).
# Prints: | worker | tree | batch × conns | Ir/msg |
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORKER=$1 TREE=$(realpath "${2:-$ROOT}")
BATCH=${BATCH:-1} CONNS=${CONNS:-1} EVENTS=${EVENTS:-20000}
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
BENCH=
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
read -r -a COMMAND <<<"$(worker_command "$WORKER" "$TREE")"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
unset PHP_INI_SCAN_DIR
run() { # EVENTS → the worker's total Ir
  timeout 900 php "$ROOT/bench/php/relay-driver.php" "$1" "$BATCH" "$CONNS" "$OUT/stderr.$1" \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$1" "${COMMAND[@]}" >/dev/null
  sed -n 's/^totals: //p' "$OUT/callgrind.$1"
}
few=$((EVENTS / 10))
a=$(run "$few") b=$(run "$EVENTS")
echo "| $WORKER | $TREE | ${BATCH} × ${CONNS} | $(((b - a) / (EVENTS - few))) |"
