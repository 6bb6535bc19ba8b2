#!/usr/bin/env bash
# Memory per idle connection of several pier builds in one run, plaintext and TLS 1.3: for each
# round, build and transport, a fresh `pier serve` (1 PHP worker on the extension) gets N idle
# connections from `pier-bench load --idle` (the method of the grid's idle row: pier's own RSS
# with every connection open minus before the ramp, divided by N). Builds alternate within a
# round, so drift of the machine hits them alike. Prints a markdown table, then the medians.
#
# Usage: bench/idle.sh LABEL PIER EXT [LABEL PIER EXT ...]
#   PIER: the pier binary; EXT: the extension its worker loads (libpier.so of the same build).
# Env: CONNS (10000), ROUNDS (3), TRANSPORTS ("plain tls").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/target/release/pier-bench"
CONNS=${CONNS:-10000} ROUNDS=${ROUNDS:-3} TRANSPORTS=${TRANSPORTS:-"plain tls"}
OUT="$ROOT/target/bench/idle"
rm -rf "$OUT"
mkdir -p "$OUT"
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
[ "$(ulimit -n)" -gt "$CONNS" ] || { echo "ulimit -n $(ulimit -n) is too low for $CONNS connections" >&2; exit 1; }
unset PHP_INI_SCAN_DIR
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
  -keyout "$OUT/key.pem" -out "$OUT/cert.pem" >/dev/null 2>&1
SERVER=
cleanup() { [ -z "$SERVER" ] || kill -TERM "$SERVER" 2>/dev/null || true; }
trap cleanup EXIT

declare -a LABELS PIERS EXTS
while [ $# -ge 3 ]; do
  LABELS+=("$1") PIERS+=("$(realpath "$2")") EXTS+=("$(realpath "$3")")
  shift 3
done
[ ${#LABELS[@]} -gt 0 ] || { echo "usage: bench/idle.sh LABEL PIER EXT [LABEL PIER EXT ...]" >&2; exit 2; }

row() { # label pier ext transport → bytes per connection
  local label=$1 pier=$2 ext=$3 transport=$4 port cfg tls_block="" extra=()
  port=$("$BENCH" port)
  cfg="$OUT/$label-$transport.rr.yaml"
  if [ "$transport" = tls ]; then
    tls_block=$(printf '      tls:\n        cert: "%s"\n        key: "%s"' "$OUT/cert.pem" "$OUT/key.pem")
    extra=(--tls-ca "$OUT/cert.pem")
  fi
  cat >"$cfg" <<YAML
version: "3"
server:
  command: "php -d extension=$ext $ROOT/bench/php/worker-ext.php 0"
tcp:
  servers:
    bench:
      addr: "127.0.0.1:$port"
      delimiter: "\n"
$tls_block
  pool:
    num_workers: 1
YAML
  "$pier" serve -c "$cfg" >"$OUT/$label-$transport.log" 2>&1 &
  SERVER=$!
  local i
  for i in $(seq 1 240); do
    if "$BENCH" load --addr "127.0.0.1:$port" -c 1 -d 1 -s 32 --batches 1 --warmup 0 --duration 10 "${extra[@]}" >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  local json
  json=$("$BENCH" load --addr "127.0.0.1:$port" -c "$CONNS" --idle 0.5 --connect-timeout 60 --watch-pid "$SERVER" "${extra[@]}")
  echo "$json" >>"$OUT/$label-$transport.jsonl"
  kill -TERM "$SERVER"
  wait "$SERVER" || true
  SERVER=
  echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)
n = r["connections"] if r.get("errors", 0) == 0 else 0
print("%.0f" % ((r["server_root_rss_kib"] - r["server_root_rss_before_kib"]) * 1024 / n) if n else "failed")'
}

declare -A RESULTS
echo "| round | transport | build | bytes per idle connection (pier process) |"
echo "|--:|---|---|--:|"
for round in $(seq 1 "$ROUNDS"); do
  for transport in $TRANSPORTS; do
    for k in "${!LABELS[@]}"; do
      b=$(row "${LABELS[$k]}" "${PIERS[$k]}" "${EXTS[$k]}" "$transport")
      RESULTS["${LABELS[$k]}-$transport"]+="$b "
      echo "| $round | $transport | ${LABELS[$k]} | $b |"
    done
  done
done
echo
echo "| transport | build | median bytes per idle connection |"
echo "|---|---|--:|"
for transport in $TRANSPORTS; do
  for label in "${LABELS[@]}"; do
    median=$(echo "${RESULTS[$label-$transport]}" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n |
      awk '{v[NR] = $1} END {if (NR == 0) print "failed"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}')
    echo "| $transport | $label | $median |"
  done
done
