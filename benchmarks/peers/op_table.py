#!/usr/bin/python3
"""Top operators of a LibTorch chrome trace (dnpo_step_bench --profile, step_peer.py --profile):
self time (time not spent in nested ops of the same thread), calls, and share of the total; then
the inclusive time of the named step phases ("dnpo::…" in trainer.cpp, "peer::…" in the peers).
Usage: op_table.py TRACE.json [TOP]"""
import collections
import json
import sys


def self_times(events):
    per_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            per_thread[e.get("tid")].append(e)
    total = collections.Counter()
    calls = collections.Counter()
    for evs in per_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [event, child time]
        for e in evs:
            while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                done, child = stack.pop()
                total[done["name"]] += done["dur"] - child
            if stack:
                stack[-1][1] += e["dur"]
            stack.append([e, 0.0])
            calls[e["name"]] += 1
        while stack:
            done, child = stack.pop()
            total[done["name"]] += done["dur"] - child
    return total, calls


def main():
    with open(sys.argv[1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    total, calls = self_times(events)
    all_us = sum(total.values())
    print(f"{'op':48} {'self ms':>9} {'share':>6} {'calls':>7}")
    for name, us in total.most_common(top):
        print(f"{name[:48]:48} {us / 1e3:9.1f} {us / all_us:6.1%} {calls[name]:7d}")
    print(f"{'all ops':48} {all_us / 1e3:9.1f}        {sum(calls.values()):7d}")
    phases = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"].startswith(("dnpo::", "peer::")):
            phases[e["name"]] += e["dur"]
    if phases:
        print(f"\n{'phase (inclusive)':48} {'ms':>9} {'share':>6}")
        for name, us in phases.most_common():
            print(f"{name:48} {us / 1e3:9.1f} {us / sum(phases.values()):6.1%}")


if __name__ == "__main__":
    main()
