#!/usr/bin/python3
"""2 ranks against 1 on the same global batch, interleaved (`benchmarks/run scaling`): for each
configs/scaling/*.toml (or the files given), `--reps` rounds of np 1, np 2 with
dist.reshard_after_forward = true (ZeRO-3) and np 2 with it false (units kept gathered for the
step), NPO steps through dnpo_fsdp_bench exactly as launch/scaling-study runs them. This VM's
speed drifts by 20% and more between minutes, so only runs made side by side are compared: each
result is the median of the per-round medians, with the speed-up np 1 time / np 2 time, and MFU
against the best fp32 GEMM rate measured between the rounds. One JSON line per result.
"""
import argparse
import glob
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
sys.path.insert(0, HERE)
from compare_steps import gemm_gflops  # noqa: E402
from scaling_study import approx_params, flops_per_step, model_shape, run  # noqa: E402

SETTINGS = (("np1", 1, 1), ("np2_zero3", 2, 1), ("np2_kept", 2, 0))  # name, world, reshard


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    configs = args.configs or glob.glob(os.path.join(HERE, "..", "configs", "scaling", "*.toml"))
    shapes = sorted((model_shape(p) for p in configs), key=approx_params)
    gemm = [gemm_gflops(1)]
    for s in shapes:
        runs = {name: [] for name, _, _ in SETTINGS}
        for _ in range(args.reps):
            for name, world, reshard in SETTINGS:
                print(f"scaling: {s['config']} {name} ...", file=sys.stderr, flush=True)
                runs[name].append(run(args.bin, s, world, args.steps, args.warmup, 1, reshard))
            gemm.append(gemm_gflops(1))
        limit = max(gemm)
        single = statistics.median(r["value"] for r in runs["np1"])
        for name, world, reshard in SETTINGS:
            ms = [r["value"] for r in runs[name]]
            value = statistics.median(ms)
            print(json.dumps({
                "name": f"scaling.{name}", "config": s["config"],
                "params": runs[name][0]["config"]["params"], "world": world,
                "reshard_after_forward": bool(reshard), "metric": "step_time_median",
                "value": value, "unit": "ms", "runs": [round(x) for x in ms],
                "speedup_vs_np1": single / value,
                "mfu": flops_per_step(s) / (value / 1e3) / (world * limit * 1e9),
                "gemm_gflops_best": limit,
                "peak_rss_mib_per_rank": max(runs[name][0]["peak_rss_mib"]),
                "gather_scatter_mib_per_step": (runs[name][0]["all_gather_bytes_per_step"] +
                                                runs[name][0]["reduce_scatter_bytes_per_step"])
                / 2 ** 20}), flush=True)


if __name__ == "__main__":
    main()
