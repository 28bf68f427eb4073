#!/usr/bin/python3
"""2 ranks against 1 on the same global batch, interleaved (`benchmarks/run scaling`): for each
configs/scaling/*.toml (or the files given), `--reps` rounds of np 1, np 2 with
dist.reshard_after_forward = true (ZeRO-3), np 2 with it false (units kept gathered for the
step) and np 2 with "auto" (the default: kept gathered where the memory fits), NPO steps through dnpo_fsdp_bench exactly as launch/scaling-study runs them. This VM's
speed drifts by 20% and more between minutes, so only runs made side by side are compared: each
result is the median of the per-round medians, with the speed-up np 1 time / np 2 time, and MFU
against the best fp32 GEMM rate measured between the rounds. One JSON line per result.

`--ceiling` adds a fourth setting, the machine's own limit for np 2: two independent np 1
processes started together, each training half the global batch (np 2's per-rank work with no
communication and no sharding; each also steps the whole optimizer, which np 2 halves). The time
of the slower of the two is what np 2 could at best reach on this machine; np 1 time over it is
the speed-up this hardware allows two single-threaded ranks.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
sys.path.insert(0, HERE)
from compare_steps import gemm_gflops  # noqa: E402
from scaling_study import approx_params, flops_per_step, model_shape, run  # noqa: E402

# name, world, dist.reshard_after_forward (1 ZeRO-3, 0 kept gathered, "auto" the default)
SETTINGS = (("np1", 1, 1), ("np2_zero3", 2, 1), ("np2_kept", 2, 0), ("np2_auto", 2, "auto"))
CEILING = ("two_independent_halves", 2, 1)


def run_two_halves(bin_dir, s, steps, warmup):
    """Two np 1 runs of half the batch each, started together; the slower one's result."""
    half = dict(s, batch=s["batch"] // 2)
    results, errors = [None, None], []

    def one(i):
        try:
            results[i] = run(bin_dir, half, 1, steps, warmup, 1, 1)
        except subprocess.CalledProcessError as e:  # reported after both have ended
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(results, key=lambda r: r["value"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first: the heap grows over the first steps, and its page "
                    "faults on fresh memory are dear on a VM (at 110M: 130k a step after 1 "
                    "step, 2.5k after 4)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also time two independent half-batch np 1 processes side by side")
    args = ap.parse_args()
    settings = SETTINGS + ((CEILING,) if args.ceiling else ())
    configs = args.configs or glob.glob(os.path.join(HERE, "..", "configs", "scaling", "*.toml"))
    shapes = sorted((model_shape(p) for p in configs), key=approx_params)
    gemm = [gemm_gflops(1)]
    for s in shapes:
        runs = {name: [] for name, _, _ in settings}
        for rep in range(args.reps):
            # np 1 first, then the others in an order that rotates each round: on a shared VM a
            # setting's place in the round shows in its time, so none may always run last.
            others = settings[1:]
            shift = rep % len(others)
            for name, world, reshard in settings[:1] + others[shift:] + others[:shift]:
                print(f"scaling: {s['config']} {name} ...", file=sys.stderr, flush=True)
                if (name, world, reshard) == CEILING:
                    runs[name].append(run_two_halves(args.bin, s, args.steps, args.warmup))
                else:
                    runs[name].append(run(args.bin, s, world, args.steps, args.warmup, 1, reshard))
            gemm.append(gemm_gflops(1))
        limit = max(gemm)
        single = statistics.median(r["value"] for r in runs["np1"])
        for name, world, reshard in settings:
            ms = [r["value"] for r in runs[name]]
            value = statistics.median(ms)
            print(json.dumps({
                "name": f"scaling.{name}", "config": s["config"],
                "params": runs[name][0]["config"]["params"], "world": world,
                "reshard_after_forward": reshard if reshard == "auto" else bool(reshard),
                "kept_gathered": runs[name][0]["config"].get("kept_gathered"),
                "metric": "step_time_median",
                "value": value, "unit": "ms", "runs": [round(x) for x in ms],
                "speedup_vs_np1": single / value,
                "mfu": flops_per_step(s) / (value / 1e3) / (world * limit * 1e9),
                "gemm_gflops_best": limit,
                "peak_rss_mib_per_rank": max(runs[name][0]["peak_rss_mib"]),
                "page_faults_per_step": max(max(r.get("page_faults_per_step", [0]))
                                            for r in runs[name]),
                "gather_scatter_mib_per_step": (runs[name][0]["all_gather_bytes_per_step"] +
                                                runs[name][0]["reduce_scatter_bytes_per_step"])
                / 2 ** 20}), flush=True)


if __name__ == "__main__":
    main()
