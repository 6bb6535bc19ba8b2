#!/usr/bin/env bash
# Pier's instructions per message split by owner (tokio's I/O driver, scheduler, time driver; the
# pool; the connection; the codec; the allocator; …), from the callgrind files bench/counts.sh
# keeps: each function's own (self) Ir, grouped by its name, marginal as counts.sh (the window of
# one message per connection subtracted). Generic functions (poll_fn, closures) land in "the rest",
# and inlining moves cost between rows from build to build: the rows are a map, the total is exact.
#
# Usage: bench/owners.sh DIR   (DIR: a counts.sh output directory, e.g. target/bench/counts/LABEL-c100-d1)
# Prints "Ir/msg  owner" lines, largest first (the total on top).
set -euo pipefail
dir=$1
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
pier=
for f in "$dir"/callgrind.*.2; do grep -qE '^cmd: *[^ ]*php[0-9.]* ' "$f" || pier=${f%.2}; done
[ -n "$pier" ] || { echo "no pier callgrind file in $dir" >&2; exit 1; }
n=$(($(messages "$dir/callgrind-load.json") - $(messages "$dir/callgrind-connect.json")))
self() { # callgrind file → "Ir<TAB>function" lines
  callgrind_annotate --threshold=100 --auto=no "$1" 2>/dev/null | grep '%)' | grep -v 'PROGRAM TOTALS' |
    sed -E 's/^ *([0-9,]+) *\( *[0-9.]+%\) +(.*)$/\1\t\2/' | tr -d ','
}
awk -F'\t' -v n="$n" '
function owner(f) {
  if (f ~ /tokio::runtime::time|Timespec|clock_gettime|wheel::/) return "tokio time driver and clock reads";
  if (f ~ /tokio::runtime::io::|poll_evented|mio::|epoll_wait|tokio::io::|tokio_util::util::poll_buf|tokio::net::/) return "tokio I/O driver and readiness";
  if (f ~ /tokio::runtime::|tokio::task::|tokio::process::|tokio_util::task/) return "tokio scheduler, task polls, wake-ups";
  if (f ~ /tokio::sync::|pool::assign/) return "channels (tokio::sync, pool::assign)";
  if (f ~ /malloc\.c|arena\.c/) return "allocator (malloc, free)";
  if (f ~ /pier_server::pool::/) return "pool/ (queue, lines, worker)";
  if (f ~ /pier_protocol::/) return "protocol codec";
  if (f ~ /pier_server::/) return "connection, framing, listener, registry";
  if (f ~ /tracing|sharded_slab|core::fmt/) return "tracing, fmt";
  return "the rest (generic poll_fn/closures, bytes, memcpy/memchr, syscall wrappers)";
}
FNR == 1 { part++ }
{ sign = part == 1 ? -1 : 1; by[owner($2)] += sign * $1; total += sign * $1 }
END {
  for (o in by) printf "%7.0f  %s\n", by[o] / n, o
  printf "%7.0f  total\n", total / n > "/dev/stderr"
}' <(self "$pier.1") <(self "$pier.2") 2>&1 | sort -rn
