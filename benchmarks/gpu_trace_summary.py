#!/usr/bin/env python3
"""Summarises a LibTorch (Kineto) chrome trace of dnpo_gpu_train_bench --trace: GPU kernels per
CUDA stream (NCCL's against compute), the event records and stream waits that order them, and
the host-blocking CUDA calls (synchronisations and device-to-host copies) per step.

    gpu_trace_summary.py TRACE.json
"""
import collections
import json
import sys


def main(path):
    with open(path) as f:
        trace = json.load(f)
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    per_stream = collections.defaultdict(lambda: {"kernels": 0, "nccl": 0, "us": 0.0})
    for k in kernels:
        stream = k.get("args", {}).get("stream", k.get("tid"))
        s = per_stream[stream]
        s["kernels"] += 1
        s["us"] += float(k.get("dur", 0))
        if "nccl" in k.get("name", "").lower():
            s["nccl"] += 1
    runtime = collections.Counter(e["name"] for e in events if e.get("cat") == "cuda_runtime")
    blocking = {n: c for n, c in runtime.items()
                if "Synchronize" in n or n in ("cudaMemcpy", "cudaMemcpyAsync")}
    out = {
        "name": "trace_summary",
        "streams": {str(k): v for k, v in sorted(per_stream.items(), key=lambda kv: str(kv[0]))},
        "nccl_streams": sorted(str(k) for k, v in per_stream.items() if v["nccl"] > 0),
        "compute_streams": sorted(str(k) for k, v in per_stream.items()
                                  if v["kernels"] > v["nccl"]),
        "cudaEventRecord": runtime.get("cudaEventRecord", 0),
        "cudaStreamWaitEvent": runtime.get("cudaStreamWaitEvent", 0),
        "host_blocking_calls": blocking,
        "top_runtime_calls": runtime.most_common(8),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
