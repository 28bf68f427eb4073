#!/usr/bin/env python3
"""Summarises a LibTorch (Kineto) chrome trace of dnpo_gpu_train_bench --trace: GPU kernels per
CUDA stream (NCCL's against compute), the event records and stream waits that order them, the
host-blocking CUDA calls with the dnpo phase they came from, the phases' wall time, the GPU's
busy fraction, and the kernels that take the most GPU time.

    gpu_trace_summary.py TRACE.json
"""
import collections
import json
import sys


def innermost(events_by_tid, e, prefix=""):
    """Names of the CPU ranges enclosing event e on its thread, innermost first."""
    out = [c for c in events_by_tid[e["tid"]]
           if c["ts"] <= e["ts"] and c["ts"] + c["dur"] >= e["ts"] + e["dur"] and
           c["name"].startswith(prefix)]
    out.sort(key=lambda c: c["dur"])
    return [c["name"] for c in out]


def main(path):
    with open(path) as f:
        trace = json.load(f)
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    cpu = collections.defaultdict(list)
    for e in events:
        if e.get("cat") in ("cpu_op", "user_annotation"):
            cpu[e["tid"]].append(e)
    # per stream: kernels and copies, those launched by NCCL collectives, GPU time
    per_stream = collections.defaultdict(lambda: {"kernels": 0, "nccl": 0, "us": 0.0})
    by_name = collections.Counter()
    for k in kernels:
        stream = k.get("args", {}).get("stream", k.get("tid"))
        s = per_stream[stream]
        s["kernels"] += 1
        s["us"] += float(k.get("dur", 0))
        by_name[k.get("name", "")[:90]] += float(k.get("dur", 0))
    runtime = [e for e in events if e.get("cat") == "cuda_runtime"]
    # Which stream carries the collectives: kernels (or, at one rank, NCCL's copies) launched
    # from inside a c10d "nccl:" operation, found through the launch's correlation id.
    launched_by = {}
    for e in runtime:
        corr = e.get("args", {}).get("correlation")
        if corr is not None:
            names = innermost(cpu, e, "nccl:")
            if names:
                launched_by[corr] = names[0]
    for k in kernels:
        op = launched_by.get(k.get("args", {}).get("correlation"))
        if op:
            per_stream[k.get("args", {}).get("stream", k.get("tid"))]["nccl"] += 1
    calls = collections.Counter(e["name"] for e in runtime)
    blocking = collections.Counter()
    for e in runtime:
        if "Synchronize" in e["name"]:
            phases = innermost(cpu, e, "dnpo::")
            ops = innermost(cpu, e)
            blocking[(e["name"], phases[0] if phases else "-", ops[0] if ops else "-")] += 1
    phases = collections.Counter()
    for tid_events in cpu.values():
        for e in tid_events:
            if e["name"].startswith("dnpo::"):
                phases[e["name"]] += e["dur"] / 1000.0
    busy = sum(v["us"] for v in per_stream.values())
    window = (max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)
              if kernels else 0)
    out = {
        "name": "trace_summary",
        "streams": {str(k): v for k, v in sorted(per_stream.items(), key=lambda kv: str(kv[0]))},
        "cudaEventRecord": calls.get("cudaEventRecord", 0),
        "cudaStreamWaitEvent": calls.get("cudaStreamWaitEvent", 0),
        "host_syncs": [[n, phase, op, c] for (n, phase, op), c in blocking.most_common(12)],
        "phase_ms": {k: round(v, 1) for k, v in phases.most_common()},
        "gpu_busy_fraction": round(busy / window, 3) if window else 0,
        "top_kernels_ms": [[n, round(us / 1000.0, 1)] for n, us in by_name.most_common(15)],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
