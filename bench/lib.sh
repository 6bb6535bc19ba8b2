# Shell helpers the bench scripts share (sourced; needs $BENCH, the pier-bench binary).

# wait_ready ADDR [LOG]: waits (bounded: 240 tries, 0.5 s apart) until one round trip to ADDR
# succeeds (with the generator's LOAD_ARGS, env: e.g. "--tls-ca cert.pem" for a TLS server);
# otherwise says so, naming LOG if given, and fails.
wait_ready() {
  local i
  for i in $(seq 1 240); do
    # shellcheck disable=SC2086 # LOAD_ARGS: words (e.g. --tls-ca FILE)
    if "$BENCH" load --addr "$1" -c 1 -d 1 -s 32 --batches 1 --warmup 0 --duration 10 ${LOAD_ARGS:-} >/dev/null 2>&1; then return 0; fi
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
# COMMAND, and tcp.io_threads only when IO_THREADS is given (else the build's default); POOL_KEYS
# (env, e.g. "max_in_flight: 64") adds keys under tcp.pool and SERVER_KEYS (env, e.g.
# "idle_timeout: 60s") under the server, for a measurement of a setting.
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
      ${SERVER_KEYS:-}
  pool:
    num_workers: ${4:-1}
    ${POOL_KEYS:-}
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
  # shellcheck disable=SC2206 # LOAD_ARGS: words (e.g. --tls-ca FILE), added to every load
  load+=(${LOAD_ARGS:-})
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

# pin CPU COMMAND...: runs COMMAND on CPU (when there are two). It execs, so call it only in a
# subshell (`pin … &` or `$(pin …)`): then $! is the server itself, and a TERM to $! reaches it
# rather than a subshell whose child outlives the script.
pin() { if [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }

# start_pinned LABEL PORT COMMAND...: starts a server COMMAND serving on 127.0.0.1:PORT on CPU 0,
# logging to $OUT/LABEL.log, and waits until it answers. Fills the caller's LABELS, SERVER[LABEL]
# (its pid: `pin` execs), ADDR[LABEL] and PIDS (what the caller's EXIT trap stops).
start_pinned() {
  local label=$1 port=$2
  shift 2
  pin 0 "$@" >"$OUT/$label.log" 2>&1 &
  SERVER[$label]=$!
  PIDS+=($!)
  ADDR[$label]=127.0.0.1:$port
  LABELS+=("$label")
  wait_ready "127.0.0.1:$port" "$OUT/$label.log" || exit 1
}

# side_by_side_setup: what the side-by-side scripts (ab.sh, switches.sh) need before
# start_targets: room for 1000 connections, no PHP ini scan dir, the target tables (LABELS,
# SERVER, ADDR, PIDS) and an EXIT trap that stops every server started.
side_by_side_setup() {
  ulimit -n 65536 2>/dev/null || true
  unset PHP_INI_SCAN_DIR
  PIDS=() LABELS=()
  declare -gA ADDR SERVER
  trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done' EXIT
}

# start_targets [LABEL PIER WORKER TREE]...: the targets of the side-by-side scripts (ab.sh,
# switches.sh), each pinned to CPU 0 with one PHP worker: RAW=1 the raw tokio echo, each line of
# PEERS ("LABEL COMMAND", COMMAND serving on the port written {port}), then each pier build
# (WORKER: libpier.so or `php`; TREE: the checkout whose bench/php and php-client/src it runs).
start_targets() {
  local port peer command
  if [ "${RAW:-0}" = 1 ]; then
    port=$("$BENCH" port)
    start_pinned raw "$port" "$BENCH" echo --addr "127.0.0.1:$port"
  fi
  while IFS= read -r peer; do
    [ -n "${peer// /}" ] || continue
    port=$("$BENCH" port)
    command=${peer#* }
    start_pinned "${peer%% *}" "$port" bash -c "exec ${command//\{port\}/$port}"
  done <<<"${PEERS:-}"
  while [ $# -gt 0 ]; do
    port=$("$BENCH" port)
    echo_config "$OUT/$1.rr.yaml" "$port" "$(worker_command "$3" "$(realpath "$4")")"
    start_pinned "$1" "$port" "$(realpath "$2")" serve -c "$OUT/$1.rr.yaml"
    shift 4
  done
}
