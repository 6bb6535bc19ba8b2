#!/usr/bin/env bash
# Where a server's CPU time per message goes beyond its instructions: per process of the server's
# tree (pier and its PHP worker apart; a peer's master, manager and worker apart), per message,
# the CPU time (task-clock) split into user and system time, the context switches (voluntary: the
# process blocked; involuntary: it was preempted), page faults, CPU migrations and system calls.
# Servers and their workers are pinned to CPU 0 and the load generator to CPU 1, as in bench/ab.sh,
# and every target runs each cell in turn, round after round.
#
# Counts are marginal, as in counts.sh: each is taken over a window of one batch per connection
# (connects, CONNECTED, one message, CLOSE) and over a window of MESSAGES messages, and the
# difference is divided by the difference in messages, so connection set-up is not counted as work
# per message. Sources: CPU time (schedstat), voluntary / involuntary switches (status) and page
# faults (stat) of every thread from /proc; with PERF=1 (the default) also `perf stat -e
# cpu-migrations,raw_syscalls:sys_enter` attached to each process (the tracepoint counts every
# system call as `strace -c` does, at a fraction of strace's cost) and `perf record -e cpu-clock
# -F 4999` samples over the load window, which split the CPU time into user and system time (the
# clock-tick utime / stime of /proc are too coarse at ~10 µs per message) and, in a second table,
# by kind of code (the user-space binaries; the kernel's symbols grouped by name: process switch,
# wake-up, epoll, pipe, copies, TCP/IP, system call entry, …). The top kernel symbols of each
# target's first round go to $OUT/kernel.md. With GRAPH=1 the samples also carry call graphs
# (`-g`), and bench/kernel-paths.py splits each target's first-round load window by call path into
# $OUT/paths.md (every process of the tree; the whole window's messages, connection set-up
# included: use a large MESSAGES). Perf costs CPU per system call, per sample and per process
# switch (it switches its counters with the task): compare rows of one run, and take the CPU time
# of an A/B from a PERF=0 run.
#
# Usage: bench/switches.sh [LABEL PIER WORKER TREE]...   (zero or more pier builds, as for ab.sh)
# Env: CELLS ("100x1 1000x1"), ROUNDS (2), MESSAGES (60000 per window), SIZE (32), PERF (1),
#   GRAPH (0), PEERS / RAW as for ab.sh, OUT (target/bench/switches).
# Prints the medians over the rounds, one row per process and one per target (every window in
# $OUT/windows.tsv), then (PERF=1) where each target's CPU time per message goes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/target/release/pier-bench"
CELLS=${CELLS:-"100x1 1000x1"} ROUNDS=${ROUNDS:-2} MESSAGES=${MESSAGES:-60000} SIZE=${SIZE:-32}
OUT=${OUT:-$ROOT/target/bench/switches} PERF=${PERF:-1} GRAPH=${GRAPH:-0}
command -v perf >/dev/null || { echo "needs perf" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
[ $(($# % 4)) -eq 0 ] && { [ $# -gt 0 ] || [ -n "${PEERS:-}" ] || [ "${RAW:-0}" = 1 ]; } ||
  { sed -n '27,32p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
side_by_side_setup
start_targets "$@"

# tree PID: PID and its descendants, parents first.
tree() {
  local p
  echo "$1"
  for p in $(pgrep -P "$1" || true); do tree "$p"; done
}
# snapshot PID...: one line per process: pid, name (comm), voluntary and involuntary switches
# and CPU time (ns, schedstat) summed over its threads, minor + major page faults.
snapshot() {
  python3 - "$@" <<'PY'
import glob, sys
for pid in sys.argv[1:]:
    try:
        vol = inv = ns = 0
        for st in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            ns += int(open(st).read().split()[0])
        for st in glob.glob(f"/proc/{pid}/task/*/status"):
            for line in open(st):
                if line.startswith("voluntary_ctxt_switches:"): vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"): inv += int(line.split()[1])
        stat = open(f"/proc/{pid}/stat").read()
        comm = stat[stat.index("(") + 1:stat.rindex(")")].replace(" ", "_")
        f = stat[stat.rindex(")") + 2:].split()
        print(pid, comm, vol, inv, ns, int(f[7]) + int(f[9]))
    except (FileNotFoundError, ProcessLookupError):
        pass
PY
}
# busy_ns PID...: CPU time (ns) of the processes' threads so far.
busy_ns() { cat $(printf '/proc/%s/task/*/schedstat ' "$@") 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
# settle PID...: waits (bounded: 5 s) until the processes used < 2 ms of CPU in 200 ms, so that a
# window's CLOSE events are inside it and not in the next one.
settle() {
  local i a b
  a=$(busy_ns "$@")
  for i in $(seq 1 25); do
    sleep 0.2
    b=$(busy_ns "$@")
    [ $((b - a)) -lt 2000000 ] && return 0
    a=$b
  done
}
# window NAME LABEL BATCHES PID...: one measured load window on LABEL's processes.
window() {
  local name=$1 label=$2 batches=$3 p perfs=()
  shift 3
  snapshot "$@" >"$OUT/$name.before"
  [ "$PERF" = 1 ] || set --
  for p in "$@"; do
    perf stat -x, -e cpu-migrations,raw_syscalls:sys_enter \
      -p "$p" -o "$OUT/$name.perf.$p" &
    perfs+=($!)
  done
  if [ "$PERF" = 1 ] && [ "${name%-load}" != "$name" ]; then
    perf record -q -e cpu-clock -F 4999 $([ "$GRAPH" = 1 ] && echo -g) -p "$(IFS=,; echo "$*")" -o "$OUT/$name.data" 2>/dev/null &
    perfs+=($!)
  fi
  sleep 0.5
  (pin 1 "$BENCH" load --addr "${ADDR[$label]}" -c "$c" -d "$d" -s "$SIZE" --warmup 0 \
    --batches "$batches" --duration 300 >"$OUT/$name.json")
  settle $(cut -d' ' -f1 "$OUT/$name.before")
  if [ ${#perfs[@]} -gt 0 ]; then
    kill -INT "${perfs[@]}"
    wait "${perfs[@]}" || true
  fi
  snapshot $(cut -d' ' -f1 "$OUT/$name.before") >"$OUT/$name.after"
}

printf 'cell\ttarget\tround\tpid\tname\tmsg_per_s\tmessages\ttask_ms\tuser_ms\tsys_ms\tcs\tvol\tinvol\tmigrations\tfaults\tsyscalls\n' >"$OUT/windows.tsv"
for cell in $CELLS; do
  c=${cell%x*} d=${cell#*x}
  for round in $(seq 1 "$ROUNDS"); do
    for label in "${LABELS[@]}"; do
      mapfile -t procs < <(tree "${SERVER[$label]}")
      (pin 1 "$BENCH" load --addr "${ADDR[$label]}" -c "$c" -d "$d" -s "$SIZE" --warmup 0 \
        --batches $((20000 / (c * d) + 1)) --duration 120 >/dev/null)
      settle "${procs[@]}"
      base="$label-$cell-$round"
      window "$base-connect" "$label" 1 "${procs[@]}"
      window "$base-load" "$label" $((MESSAGES / (c * d))) "${procs[@]}"
      python3 - "$OUT" "$base" "$cell" "$label" "$round" "${procs[@]}" >>"$OUT/windows.tsv" <<'PY'
import json, sys
out, base, cell, label, rnd, *pids = sys.argv[1:]
NA = float("nan")
def perf(name, pid):
    v = {}
    try:
        lines = open(f"{out}/{base}-{name}.perf.{pid}").readlines()
    except FileNotFoundError:  # PERF=0
        return v
    for line in lines:
        f = line.strip().split(",")
        if len(f) > 2 and f[2]:
            v[f[2]] = float(f[0]) if f[0][0].isdigit() else 0.0
    return v
def snap(name, when):
    return {l.split()[0]: l.split() for l in open(f"{out}/{base}-{name}.{when}")}
def window(name):
    r = json.load(open(f"{out}/{base}-{name}.json"))
    b, a = snap(name, "before"), snap(name, "after")
    rows = {}
    for pid in pids:
        if pid not in b or pid not in a:
            continue
        p = perf(name, pid)
        vol, inv, ns, faults = [int(a[pid][i]) - int(b[pid][i]) for i in range(2, 6)]
        rows[pid] = (b[pid][1], [ns / 1e6, NA, NA, vol + inv, vol, inv,
                     p.get("cpu-migrations", NA), faults, p.get("raw_syscalls:sys_enter", NA)])
    return r, rows
def kernel_share():
    """pid -> share of the load window's cpu-clock samples taken in the kernel."""
    import os, subprocess
    if not os.path.exists(f"{out}/{base}-load.data"):
        return {}
    rep = subprocess.run(["perf", "report", "-i", f"{out}/{base}-load.data", "--stdio", "--no-children",
                          "--sort", "pid,dso", "-g", "none", "--percentage", "relative"],
                         capture_output=True, text=True).stdout
    tot, ker = {}, {}
    for line in rep.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].endswith("%") and ":" in f[1]:
            pid = f[1].split(":")[0]
            pct = float(f[0][:-1])
            tot[pid] = tot.get(pid, 0.0) + pct
            if f[2] == "[kernel.kallsyms]":
                ker[pid] = ker.get(pid, 0.0) + pct
    return {pid: ker.get(pid, 0.0) / tot[pid] for pid in tot if tot[pid] > 0}
rc, cc = window("connect")
rl, ll = window("load")
n = rl["messages"] - rc["messages"]
shares = kernel_share()
for pid, (name, vals) in ll.items():
    base_vals = cc.get(pid, (name, [0.0] * len(vals)))[1]
    marg = [(x - y) for x, y in zip(vals, base_vals)]
    # user / system split of the marginal CPU time from the samples' share in the kernel
    k = shares.get(pid, 0.0 if shares else None)  # sampled, but no sample of this one: idle
    if k is not None:
        marg[1], marg[2] = marg[0] * (1 - k), marg[0] * k
    print("\t".join([cell, label, rnd, pid, name, "%.0f" % rl["msg_per_s"], str(n)] + ["%.3f" % m for m in marg]))
PY
    done
  done
done

# Medians over the rounds, per message (µs; counts per message), one row per process and a total.
python3 - "$OUT/windows.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = ["task_ms", "user_ms", "sys_ms", "cs", "vol", "invol", "migrations", "faults", "syscalls"]
groups = {}
for r in rows:
    n = int(r["messages"])
    per = {k: float(r[k]) / n for k in keys}
    for k in ("task_ms", "user_ms", "sys_ms"):
        per[k] *= 1000  # ms per message -> µs per message
    g = groups.setdefault((r["cell"], r["target"]), {})
    # processes keep their order in the tree; the worker of pier is "php", its own name
    slot = g.setdefault(r["pid"], {"name": r["name"], "vals": [], "rate": []})
    slot["vals"].append(per)
    slot["rate"].append(float(r["msg_per_s"]))
    total = g.setdefault("all", {}).setdefault(r["round"], {k: 0.0 for k in keys})
    for k in keys:
        total[k] += per[k]
print("| cell | target | process | CPU µs/msg | user µs | system µs | switches/msg (vol + invol) | faults/msg | syscalls/msg | msg/s |")
print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
med = lambda xs: statistics.median(xs)
f = lambda fmt, x: "–" if x != x else fmt % x  # nan (not measured with PERF=0) -> "–"
def row(cell, target, name, m, rate, bold):
    b = "**" if bold else ""
    print("| %s | %s | %s | %s | %s | %s | %s (%s + %s) | %s | %s | %s |" % (
        cell.replace("x", " × "), target, b + name + b, b + f("%.2f", m["task_ms"]) + b,
        f("%.2f", m["user_ms"]), f("%.2f", m["sys_ms"]), f("%.3f", m["cs"]), f("%.3f", m["vol"]),
        f("%.3f", m["invol"]), f("%.4f", m["faults"]), f("%.2f", m["syscalls"]), rate))
for (cell, target), procs in groups.items():
    rounds = procs.pop("all")  # per round, the sum over the processes; its median per column
    rate = 0.0
    for pid, s in procs.items():
        m = {k: med([v[k] for v in s["vals"]]) for k in keys}
        rate = med(s["rate"])
        row(cell, target, s["name"], m, "", False)
    total = {k: med([t[k] for t in rounds.values()]) for k in keys}
    row(cell, target, "all", total, "%.0f" % rate, True)
PY

[ "$PERF" = 1 ] || exit 0

# Where each target's CPU time per message goes (first round's samples, every process of the
# tree): the median CPU µs/msg split by the samples' share per kind of code. The kernel's symbols
# are grouped by name (heuristic, see `kind` below); "irqs-off" is time the sampling timer could
# only see once interrupts were enabled again (`_raw_spin_unlock_irqrestore` and the like: in this
# VM a sample taken with interrupts disabled lands there), i.e. not attributed.
python3 - "$OUT" "$CELLS" "${LABELS[@]}" >"$OUT/split.md" <<'PY'
import csv, re, statistics, subprocess, sys
out, cells, labels = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
KINDS = [
    ("process switch", r"^(finish_task_switch|__schedule|schedule|__switch_to|switch_mm|switch_fpu|__perf_event_task_sched|perf_event_context_sched|prepare_task_switch|pick_next|put_prev|set_next)"),
    ("wake-up", r"^(try_to_wake_up|ttwu|__wake_up|wake_up|enqueue|dequeue|select_task_rq|check_preempt|update_curr|update_load|reweight|resched|autoremove_wake|pollwake|ep_poll_callback|sock_def_readable)"),
    ("epoll / select", r"^(ep_|do_epoll|__x64_sys_epoll|sock_poll|tcp_poll|do_select|core_sys_select|__pollwait|poll_|select_)"),
    ("pipe", r"^(pipe_|anon_pipe|__pipe)"),
    ("copies", r"^(_copy_|copy_|__check_object_size|__virt_addr_valid|check_heap_object|rep_movs|memcpy|memset|clear_user)"),
    ("TCP/IP loopback", r"^(tcp|__tcp|ip_|__ip|ipv4|inet|__inet|skb|__skb|kfree_skb|consume_skb|alloc_skb|__alloc_skb|__kfree_skb|net_|__net|netif|__netif|napi|__napi|dev_|__dev|loopback|sk_|__sk|sock_|__sock|bbr|validate_xmit|process_backlog|raw_v4|__sys_sendto|__sys_recvfrom|__sys_sendmsg|__sys_recvmsg|sock_recvmsg|sock_sendmsg|release_sock|lock_sock|__release_sock|security_socket|skb_|kmem_cache|kmalloc|__kmalloc|kfree|__slab|___slab|slab_|mod_objcg|obj_cgroup|refill_obj|memcg|__mod_memcg|page_counter|__local_bh|local_bh|handle_softirqs|__do_softirq|do_softirq|csum|nf_|ipt_|eth_|neigh_|dst_|fib_)"),
    ("system call entry / fd", r"^(do_syscall_64|syscall_|entry_SYSCALL|__x64_sys|__fget|fdget|__fdget|fput|__fput|ksys_|vfs_|do_iter|rw_verify|__rseq|rseq_|exit_to_user|syscall_exit|__audit|security_file|fsnotify|__fsnotify|import_iovec|__import_iovec|iovec_from_user|do_readv|do_writev|new_sync)"),
    ("perf (the measurement)", r"^(perf_|__perf|ctx_sched|event_sched|visit_groups|merge_sched|x86_pmu|intel_)"),
    ("irqs-off (not attributed)", r"^(_raw_spin_unlock_irq|_raw_spin_unlock_irqrestore|native_irq_enable|arch_local_irq)"),
    ("timers / clock", r"^(read_tsc|ktime_|hrtimer|__hrtimer|native_write_msr|lapic_|clockevents|tick_|__sysvec|sysvec|irq_|asm_sysvec|timekeeping)"),
]
def kind(dso, sym):
    if dso != "[kernel.kallsyms]":
        return "user: " + ("pier" if dso == "pier" else "libpier.so" if dso == "libpier.so" else "php" if dso.startswith("php") else "libc" if dso.startswith("libc") else "swoole.so" if dso.startswith("swoole") else "other user")
    for name, pattern in KINDS:
        if re.match(pattern, sym):
            return "kernel: " + name
    return "kernel: other"
rows = list(csv.DictReader(open(f"{out}/windows.tsv"), delimiter="\t"))
kinds = ["user: pier", "user: libpier.so", "user: php", "user: swoole.so", "user: libc", "user: other user"] + ["kernel: " + k for k, _ in KINDS] + ["kernel: other"]
table = {}
for cell in cells:
    for label in labels:
        per_round = {}
        for r in rows:
            if r["cell"] == cell and r["target"] == label:
                per_round[r["round"]] = per_round.get(r["round"], 0.0) + float(r["task_ms"]) * 1000 / int(r["messages"])
        if not per_round:
            continue
        cpu = statistics.median(per_round.values())
        rep = subprocess.run(["perf", "report", "-i", f"{out}/{label}-{cell}-1-load.data", "--stdio", "--no-children",
                              "--sort", "dso,sym", "-g", "none", "--percentage", "relative"],
                             capture_output=True, text=True).stdout
        share = {}
        for line in rep.splitlines():
            m = re.match(r"^\s+([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(\S+)", line)
            if m:
                k = kind(m.group(2), m.group(3))
                share[k] = share.get(k, 0.0) + float(m.group(1)) / 100
        table[(cell, label)] = (cpu, share)
cols = list(table)
print("| where (µs per message) | " + " | ".join(f"{l}, {c.replace('x', ' × ')}" for c, l in cols) + " |")
print("|---|" + "--:|" * len(cols))
for k in kinds:
    vals = [table[c][0] * table[c][1].get(k, 0.0) for c in cols]
    if max(vals) >= 0.05:
        print(f"| {k} | " + " | ".join("%.2f" % v for v in vals) + " |")
print("| **all** | " + " | ".join("**%.2f**" % table[c][0] for c in cols) + " |")
PY
echo
cat "$OUT/split.md"

# The kernel's share by symbol, per target and cell (first round), for the explanation.
for cell in $CELLS; do
  for label in "${LABELS[@]}"; do
    echo "### $label, ${cell/x/ × } (cpu-clock samples of the server's processes in the kernel)"
    echo '```'
    perf report -i "$OUT/$label-$cell-1-load.data" --stdio --no-children --sort sym -g none \
      --dsos '[kernel.kallsyms]' --percentage relative 2>/dev/null | grep -E '^ +[0-9]' | head -15 || true
    echo '```'
  done
done >"$OUT/kernel.md"

[ "$GRAPH" = 1 ] || exit 0
# Kernel time by call path (first round's load window of each target and cell, every process of
# the server's tree), one column each.
cols=()
for cell in $CELLS; do
  for label in "${LABELS[@]}"; do
    cols+=("$label ${cell/x/ × }=$OUT/$label-$cell-1-load.data:$(messages "$OUT/$label-$cell-1-load.json")")
  done
done
python3 "$ROOT/bench/kernel-paths.py" "${cols[@]}" >"$OUT/paths.md"
echo
cat "$OUT/paths.md"
