#!/usr/bin/env python3
"""Merge callgrind phase dumps and perf samples into a linker symbol order.

    symbol-order.py BINARY OUT PHASE_DUMP... [--perf PERF_SYMBOLS]

Each PHASE_DUMP is a callgrind output file holding one phase's costs (in
the order the groups should be laid out); PERF_SYMBOLS a file of mangled
names perf sampled in BINARY. Writes the functions of BINARY that ran, one
mangled name per line: each phase's functions not already placed, sorted
by name (so that a rerun changes the file only where the set changed),
then perf's extra names (code valgrind's emulated CPU does not take: the
AVX2/ADX/VAES variants of ring's assembly), then the rest of ring's
assembly entry points, so that any CPU's variant lands next to the
others.
"""

import re
import subprocess
import sys
from collections import Counter


def executed(path, obj):
    """Mangled names of `obj`'s functions with cost in one callgrind dump."""
    names = {"ob": {}, "fn": {}}

    def name(kind, val):
        m = re.match(r"\((\d+)\)(?: (.*))?$", val)
        if not m:
            return val
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1))

    cost = Counter()
    ob = fn = None
    after_calls = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("ob="):
            ob = name("ob", line[3:])
        elif line.startswith("fn="):
            fn = name("fn", line[3:])
        elif line.startswith("cob="):
            name("ob", line[4:])
        elif line.startswith("cfn="):
            name("fn", line[4:])
        elif line.startswith("calls="):
            after_calls = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            # The line after calls= is the call's inclusive cost: not fn's own.
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if ob and ob.endswith(obj) and fn and len(parts) > 1 and parts[1].isdigit():
                cost[fn] += int(parts[1])
    return {n.split("'")[0] for n, c in cost.items() if c > 0}


def main():
    args = sys.argv[1:]
    perf = None
    if "--perf" in args:
        i = args.index("--perf")
        perf = args[i + 1]
        del args[i : i + 2]
    binary, out, dumps = args[0], args[1], args[2:]
    defined = set()
    nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            defined.add(parts[2])
    obj = "/" + binary.rsplit("/", 1)[-1]
    order, seen = [], set()

    def place(names):
        for n in sorted(names):
            if n in defined and n not in seen:
                seen.add(n)
                order.append(n)

    for d in dumps:
        before = len(order)
        place(executed(d, obj))
        print(f"{d}: {len(order) - before} functions", file=sys.stderr)
    if perf:
        before = len(order)
        place(open(perf).read().split())
        print(f"perf: {len(order) - before} more", file=sys.stderr)
    place(n for n in defined if n.startswith("ring_core_"))
    with open(out, "w") as f:
        f.write("".join(n + "\n" for n in order))
    print(f"{out}: {len(order)} symbols", file=sys.stderr)


if __name__ == "__main__":
    main()
