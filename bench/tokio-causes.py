#!/usr/bin/env python3
"""What pier makes tokio do per message, by cause: a count and the instructions it costs.

Groups bench/calls.py's per-function numbers (calls and self Ir per message, marginal as
bench/counts.sh) into the causes a change on pier's side can move: task polls, task wakes,
waker clones, reads, readiness checks, the reply's send, I/O events, epoll turns, parks and the
timer, and pier's own read layers around tokio's. A group's count is the calls per message of
its first function; its Ir is the self Ir of every function in it (inlined helpers — the coop
budget, CONTEXT accesses — are in their caller's).

Usage: bench/tokio-causes.py BASE_DIR [NEW_DIR]   (counts.sh output directories, same cell)
Prints a markdown table.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
calls = __import__("calls")

# (cause, substrings of the functions it owns; the first names the function counted)
GROUPS = [
    ("task polls (Harness::poll, Core::poll, run_task, next_task, the block_on loop)",
     ["task::harness::Harness<T,S>::poll", "task::core::Core<T,S>::poll", "task::raw::poll",
      "current_thread::Context::run_task", "current_thread::Core::next_task",
      "context::scoped::Scoped<T>::set"]),
    ("task wakes (wake_by_val, transition_to_notified, schedule)",
     ["task::waker::wake_by_val", "transition_to_notified_by_val", "task::raw::schedule",
      "task::Schedule for"]),
    ("waker clones and drops", ["waker::clone_waker", "waker::drop_waker"]),
    ("reads (PollEvented::poll_read, poll_read_buf)",
     ["PollEvented<E>::poll_read", "poll_buf::poll_read_buf"]),
    ("readiness checks (Registration::poll_ready, poll_readiness; coop budget inlined)",
     ["Registration::poll_ready", "ScheduledIo::poll_readiness"]),
    ("the reply's send (Registration::try_io)", ["Registration::try_io"]),
    ("I/O events dispatched (ScheduledIo::wake)", ["ScheduledIo::wake"]),
    ("epoll turns (io::Driver::turn, epoll_wait)", ["io::driver::Driver::turn", "epoll_wait"]),
    ("parks: time driver, signals, orphans, clock",
     ["time::Driver::park_internal", "wheel::", "process_at_time", "orphan", "signal::Driver",
      "Context::park", "park_yield", "park_timeout", "defer"]),
    ("pier's read layers (scratch LocalKey::with, limits::Reader, Rewind)",
     ["LocalKey<T>::with", "limits::Reader<R>", "proxy::Rewind<S>"]),
]


def per_function(d):
    """→ {function: (calls/msg, self Ir/msg)} of the pier process in counts.sh directory d."""
    pier, n = calls.pier_file(d)
    s1, c1, _ = calls.parse(pier + ".1")
    s2, c2, _ = calls.parse(pier + ".2")
    return {f: ((c2.get(f, 0) - c1.get(f, 0)) / n, (s2.get(f, 0) - s1.get(f, 0)) / n)
            for f in set(s1) | set(s2) | set(c1) | set(c2) if f}


def group(r, pats):
    count = next((v[0] for f, v in r.items() if pats[0] in f), 0.0)
    ir = sum(v[1] for f, v in r.items() if any(p in f for p in pats))
    return count, ir


def main():
    runs = [per_function(d) for d in sys.argv[1:3]]
    arrow = " → ".join(["{}"] * len(runs))
    print("| cause | count per message | Ir per count | Ir per message |")
    print("|---|--:|--:|--:|")
    sums = [0.0] * len(runs)
    for name, pats in GROUPS:
        g = [group(r, pats) for r in runs]
        for i, (_, ir) in enumerate(g):
            sums[i] += ir
        c0, i0 = g[0]
        print(f"| {name} | {arrow.format(*(f'{c:.3f}' for c, _ in g))} | "
              f"{i0 / c0 if c0 else 0:.0f} | {arrow.format(*(f'{ir:.0f}' for _, ir in g))} |")
    print(f"| sum | | | {arrow.format(*(f'{s:.0f}' for s in sums))} |")


if __name__ == "__main__":
    main()
