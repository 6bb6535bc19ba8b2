#!/usr/bin/env python3
"""Kernel time per message by call path, from `perf record -e cpu-clock -F 4999 -g` samples.

Groups each sample by the system call it is under and by what the kernel does there (the reply's
send and the loopback receive it runs for the client's socket, the request's read, polling, the
relay pipe, preemption), so two servers' kernel time compare path by path; bench/switches.sh's
grouping by symbol name cannot tell whose socket a TCP function works for.

Usage: bench/kernel-paths.py LABEL=PERF_DATA:MESSAGES[:COMM] ...
  PERF_DATA  perf.data of the server process(es), recorded with -g over a load window
  MESSAGES   messages answered in that window (e.g. `perf stat -e sock:sock_send_length -p PID`:
             one send per reply at depth 1)
  COMM       only samples of this command (e.g. `pier`, leaving out its PHP worker)
Prints one markdown table, a column per LABEL (µs per message at 200 µs per sample).
"""
import collections
import subprocess
import sys

SAMPLE_US = 1e6 / 4999
SEND = ("do_writev", "__x64_sys_writev", "__x64_sys_sendto", "__x64_sys_sendmsg")

# (row, test on (system call entry frame, set of kernel frames)); the first that matches wins.
ROWS = [
    ("preempted at the return to user space (`exit_to_user_mode_loop` → `schedule`)",
     lambda call, k: "exit_to_user_mode_loop" in k and "__schedule" in k and call is None),
    ("reply send: waking the client (`sock_def_readable` → `ep_poll_callback`, irqs off)",
     lambda call, k: call in SEND and "process_backlog" in k and "sock_def_readable" in k),
    ("reply send: the reply acknowledging the request, on the client's socket (`tcp_ack`)",
     lambda call, k: call in SEND and "process_backlog" in k and "tcp_ack" in k),
    ("reply send: loopback receive on the client's socket (softirq, rest)",
     lambda call, k: call in SEND and "process_backlog" in k),
    ("reply send: TCP/IP transmit (`tcp_write_xmit`)",
     lambda call, k: call in SEND and "tcp_write_xmit" in k),
    ("reply send: TCP copy and skb allocation (`tcp_sendmsg_locked`)",
     lambda call, k: call in SEND and "tcp_sendmsg_locked" in k),
    ("reply send: the call's own layers (`writev`: `vfs_writev`, `fdget_pos`, `sock_write_iter`; `sendto`)",
     lambda call, k: call in SEND),
    ("request read (`recvfrom`)", lambda call, k: call == "__x64_sys_recvfrom"),
    ("polling: `epoll_wait` / `select` (and blocking in it)",
     lambda call, k: call in ("__x64_sys_epoll_wait", "__x64_sys_pselect6", "__x64_sys_select")),
    ("switched back in after blocking in a read or write (`schedule` → `finish_task_switch`)",
     lambda call, k: "__schedule" in k),
    ("relay pipe (`read`, `write`)",
     lambda call, k: bool(k & {"pipe_read", "pipe_write", "anon_pipe_read", "anon_pipe_write"})),
    ("perf's system call tracepoints (the measurement)",
     lambda call, k: "perf_trace_sys_enter" in k or "perf_syscall_enter" in k or "perf_syscall_exit" in k),
    ("other kernel", lambda call, k: True),
]


def rows_of(data, comm):
    """Sample counts per row, and the user-space samples."""
    script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,ip,sym"],
                            capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for block in script.split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or (comm and lines[0].split()[0] != comm):
            continue
        frames = [line.split(None, 1) for line in lines[1:]]
        kernel = [f[1] if len(f) > 1 else "?" for f in frames if f[0].startswith("ffffffff")]
        if not frames or not frames[0][0].startswith("ffffffff"):
            counts["user"] += 1
            continue
        k = set(kernel)
        call = next((f for f in reversed(kernel) if f.startswith("__x64_sys_") or f == "do_writev"), None)
        counts[next(name for name, test in ROWS if test(call, k))] += 1
    return counts


def main():
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__)
    cols = []
    for arg in sys.argv[1:]:
        label, spec = arg.split("=", 1)
        data, messages, *comm = spec.split(":")
        cols.append((label, rows_of(data, comm[0] if comm else None), int(messages)))
    us = lambda counts, key, n: counts[key] * SAMPLE_US / n
    print("| kernel path (µs per message) | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|" + "--:|" * len(cols))
    for name, _ in ROWS:
        print(f"| {name} | " + " | ".join(f"{us(c, name, n):.2f}" for _, c, n in cols) + " |")
    kern = [sum(c.values()) - c["user"] for _, c, _ in cols]
    print("| **kernel** | " + " | ".join(f"**{k * SAMPLE_US / n:.2f}**" for k, (_, _, n) in zip(kern, cols)) + " |")
    print("| user space | " + " | ".join(f"{us(c, 'user', n):.2f}" for _, c, n in cols) + " |")


if __name__ == "__main__":
    main()
