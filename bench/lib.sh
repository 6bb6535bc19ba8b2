# Shell helpers the bench scripts share (sourced; needs $BENCH, the pier-bench binary).

# wait_ready ADDR [LOG]: waits (bounded: 240 tries, 0.5 s apart) until one round trip to ADDR
# succeeds; otherwise says so, naming LOG if given, and fails.
wait_ready() {
  local i
  for i in $(seq 1 240); do
    if "$BENCH" load --addr "$1" -c 1 -d 1 -s 32 --batches 1 --warmup 0 --duration 10 >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "server on $1 never answered${2:+ (log: $2)}" >&2
  return 1
}

# worker_command WORKER TREE: the command of the PHP worker the bench runs: WORKER is the extension
# (path to libpier.so) or `php` (the pure-PHP package); TREE the checkout whose bench/php it runs.
worker_command() {
  if [ "$1" = php ]; then
    echo "php $2/bench/php/worker-php.php 0"
  else
    echo "php -d extension=$(realpath "$1") $2/bench/php/worker-ext.php 0"
  fi
}

# messages REPORT: the message count of a `pier-bench load` report (its JSON line).
messages() { sed -E 's/.*"messages":([0-9]+).*/\1/' "$1"; }

# callgrind_windows ADDR PIDS...: the two callgrind windows of a marginal count (counts.sh,
# misses.sh), in processes PIDS started with --instr-atstart=no and serving ADDR: a warm-up, then
# one batch per connection (dumped on its own: the *.1 files), then the measured messages (dumped:
# the *.2 files). Sets $extra: how many messages the second window holds beyond the first
# (a variable, not output, so that the calling script's `set -e` covers every step). Uses the
# scripts' $load (the generator's options), $CONNS, $DEPTH, $MESSAGES and $OUT.
callgrind_windows() {
  local addr=$1
  shift
  "$BENCH" load --addr "$addr" "${load[@]}" --batches 50 --duration 120 >/dev/null
  callgrind_control -i on "$@" >/dev/null 2>&1
  "$BENCH" load --addr "$addr" "${load[@]}" --batches 1 --duration 300 >"$OUT/callgrind-connect.json"
  callgrind_control -d "$@" >/dev/null 2>&1
  "$BENCH" load --addr "$addr" "${load[@]}" --batches $((MESSAGES / (CONNS * DEPTH))) --duration 900 >"$OUT/callgrind-load.json"
  callgrind_control -i off "$@" >/dev/null 2>&1
  callgrind_control -d "$@" >/dev/null 2>&1
  extra=$(($(messages "$OUT/callgrind-load.json") - $(messages "$OUT/callgrind-connect.json")))
}

# echo_config FILE PORT COMMAND [WORKERS] [IO_THREADS]: writes the pier config the bench scripts
# run: one server `bench` on 127.0.0.1:PORT framed by "\n", WORKERS PHP workers (default 1) running
# COMMAND, and tcp.io_threads only when IO_THREADS is given (else the build's default).
echo_config() {
  cat >"$1" <<YAML
version: "3"
server:
  command: "$3"
tcp:
  ${5:+io_threads: $5}
  servers:
    bench:
      addr: "127.0.0.1:$2"
      delimiter: "\n"
  pool:
    num_workers: ${4:-1}
YAML
}

# marginal_setup KIND MESSAGES LABEL PIER WORKER [TREE]: the set-up of the marginal counts
# (counts.sh, misses.sh; their usage lines say the arguments and env). Sets LABEL, PIER, WORKER,
# TREE (default: this checkout), CONNS, DEPTH, SIZE, MESSAGES (default: the second argument),
# OUT (emptied: $OUT, default target/bench/KIND, then LABEL-cCONNS-dDEPTH), COMMAND (the worker's),
# load (the generator's options) and SERVER (the pier process the EXIT trap stops; empty while
# none runs). Needs $ROOT.
marginal_setup() {
  local kind=$1 messages=$2
  shift 2
  LABEL=$1 PIER=$(realpath "$2") WORKER=$3 TREE=$(realpath "${4:-$ROOT}")
  CONNS=${CONNS:-1} DEPTH=${DEPTH:-1} SIZE=${SIZE:-32} MESSAGES=${MESSAGES:-$messages}
  OUT=${OUT:-$ROOT/target/bench/$kind}/$LABEL-c$CONNS-d$DEPTH
  rm -rf "$OUT"
  mkdir -p "$OUT"
  COMMAND=$(worker_command "$WORKER" "$TREE")
  load=(-c "$CONNS" -d "$DEPTH" -s "$SIZE" --warmup 0)
  unset PHP_INI_SCAN_DIR
  SERVER=
  trap 'if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null || true; fi' EXIT
}

# stop_server: stops the pier process $SERVER and waits for it to exit.
stop_server() {
  kill -TERM "$SERVER"
  wait "$SERVER" || true
  SERVER=
}
