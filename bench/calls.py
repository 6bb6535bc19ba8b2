#!/usr/bin/env python3
"""Calls and instructions per message, per function, from the callgrind files bench/counts.sh keeps.

callgrind_annotate prints each function's Ir but not how often it ran; the brief's question for
tokio ("how many task wakes, polls, readiness checks, waker clones per message, and what each
costs") needs both. This reads the callgrind format itself: each function's self Ir, its calls
(summed over every call site) and the inclusive Ir of those calls, all marginal as counts.sh
(the window of one message per connection, the *.1 file, subtracted from the measured one, the
*.2 file) and divided by the messages between them. A function inlined into its caller has no
calls of its own: its Ir is its caller's.

Usage: bench/calls.py DIR [REGEX]
  DIR    a counts.sh output directory (e.g. target/bench/counts/LABEL-c100-d1)
  REGEX  only functions whose name matches (Python re, searched), e.g. 'tokio|mio'
Prints, largest self Ir first: calls/msg, self Ir/msg, Ir per call (inclusive), function.
"""
import glob
import json
import re
import sys
from collections import defaultdict


def parse(path):
    """→ (self Ir by function, calls by callee, inclusive Ir of those calls by callee)."""
    self_ir = defaultdict(int)
    calls = defaultdict(int)
    incl = defaultdict(int)
    names = {}
    fn = None
    callee = None
    pending_calls = None  # the next cost line is a call's inclusive cost

    def name(spec):
        # "(id) name" defines an id, "(id)" refers to one (name compression).
        m = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if not m:
            return spec
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), spec)

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_calls is not None:
                    calls[callee] += pending_calls
                    incl[callee] += cost
                    pending_calls = None
                else:
                    self_ir[fn] += cost
            elif line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                callee = name(line[4:])
            elif line.startswith("calls="):
                pending_calls = int(line[6:].split()[0])
            elif line.startswith(("cfi=", "cfl=")):
                pass
            # fl=, fi=, fe=, ob=, cob= and headers: names only, not needed here.
    return self_ir, calls, incl


def messages(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["messages"]


def pier_file(d):
    """→ (the pier process's callgrind files without .1/.2, messages between the windows)."""
    pier = None
    for f in glob.glob(f"{d}/callgrind.*.2"):
        with open(f, encoding="utf-8", errors="replace") as h:
            head = h.read(2000)
        if not re.search(r"^cmd: *\S*php[0-9.]* ", head, re.M):
            pier = f[:-2]
    if pier is None:
        sys.exit(f"no pier callgrind file in {d}")
    return pier, messages(f"{d}/callgrind-load.json") - messages(f"{d}/callgrind-connect.json")


def main():
    d = sys.argv[1]
    pattern = re.compile(sys.argv[2]) if len(sys.argv) > 2 else None
    pier, n = pier_file(d)
    s1, c1, i1 = parse(pier + ".1")
    s2, c2, i2 = parse(pier + ".2")
    rows = []
    for f in set(s1) | set(s2) | set(c1) | set(c2):
        if pattern and not pattern.search(f or ""):
            continue
        s = (s2.get(f, 0) - s1.get(f, 0)) / n
        c = (c2.get(f, 0) - c1.get(f, 0)) / n
        i = i2.get(f, 0) - i1.get(f, 0)
        per = i / (c * n) if c > 0.005 else 0
        if abs(s) >= 0.5 or abs(c) >= 0.01:
            rows.append((s, c, per, f))
    rows.sort(key=lambda r: -r[0])
    print(f"# {pier}: {n} messages; calls/msg  self Ir/msg  Ir/call (inclusive)  function")
    try:
        for s, c, per, f in rows:
            print(f"{c:8.3f} {s:8.1f} {per:9.1f}  {f}")
    except BrokenPipeError:  # piped into head
        sys.stderr.close()


if __name__ == "__main__":
    main()
