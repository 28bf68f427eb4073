#!/usr/bin/python3
"""The scaling study behind launch/scaling-study: every configs/scaling/*.toml (or the files given)
× every world size, NPO steps through dnpo_fsdp_bench under mpirun. Per run: step time, tokens/s,
MFU against this machine's measured fp32 GEMM rate (one thread per rank), collective bytes per
step (counted and from theory), and per-rank memory: parameters, gradients and optimizer state
(from the shard sizes), the peak RSS measured, and activations and the rest (peak RSS above the
start-up baseline, less those states). Writes results.csv, results.jsonl, summary.md and PNG plots
(gnuplot) into --out. World sizes above the core count run oversubscribed: their times are not
meaningful, their memory and bytes are (the summary marks them).
"""
import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
from compare_steps import gemm_gflops, model_flops  # noqa: E402

PROMPT_LEN, RESPONSE_LEN = 32, 32  # the study's samples (the configs' data lengths fit them)
MIB = 1024 * 1024


def model_shape(path):
    """The study's view of a dnpo config; exits naming the file and key when one is missing."""
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"scaling-study: {path}: {e}")
    m, t = cfg.get("model", {}), cfg.get("train", {})
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                "num_attention_heads"):
        if key not in m:
            sys.exit(f"scaling-study: {path}: [model] {key} is missing (the study needs the "
                     "model's shape spelled out)")
    return {"config": os.path.basename(path)[:-5], "vocab": m["vocab_size"],
            "hidden": m["hidden_size"], "layers": m["num_hidden_layers"],
            "intermediate": m["intermediate_size"], "heads": m["num_attention_heads"],
            "kv_heads": m.get("num_key_value_heads", m["num_attention_heads"]),
            "tied": m.get("tie_word_embeddings", True), "batch": t.get("batch_size", 8),
            "micro": t.get("micro_batch_size", 2)}


def approx_params(s):
    """Parameters of a shape (for ordering only; the benchmark reports the exact count)."""
    d, kv = s["hidden"], s["hidden"] * s["kv_heads"] // s["heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * s["intermediate"] + 2 * d
    return s["vocab"] * d * (1 if s["tied"] else 2) + s["layers"] * per_layer + d


def flops_per_step(s):
    """compare_steps.model_flops of the study's NPO step: 2 × batch sequences of BOS + prompt +
    response tokens, the negatives' response tokens noised."""
    dims = {"hidden_size": s["hidden"], "num_hidden_layers": s["layers"],
            "vocab_size": s["vocab"], "intermediate_size": s["intermediate"],
            "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"]}
    return model_flops(dims, 2 * s["batch"], 1 + PROMPT_LEN + RESPONSE_LEN,
                       s["batch"] * RESPONSE_LEN, "npo")


def state_mib(s, params, world):
    """Per-rank bytes of the sharded states (fp32): policy and reference parameters, policy
    gradients, AdamW's two moments; the noise head (LayerNorm + d×V) has all four."""
    head = s["hidden"] * s["vocab"] + 2 * s["hidden"]
    shard = lambda n: -(-n // world)  # noqa: E731  (ceil: shards are padded to equal size)
    return {"params_mib": 4 * (2 * shard(params) + shard(head)) / MIB,
            "grads_mib": 4 * (shard(params) + shard(head)) / MIB,
            "optimizer_mib": 4 * 2 * (shard(params) + shard(head)) / MIB}


def run(bin_dir, s, world, steps, warmup, threads, reshard):
    micro = max(1, min(s["micro"], s["batch"] // world))
    cmd = ["mpirun", "-np", str(world), "--oversubscribe", "--bind-to", "none",
           f"{bin_dir}/dnpo_fsdp_bench", "--loss", "npo", "--vocab", str(s["vocab"]),
           "--hidden", str(s["hidden"]), "--layers", str(s["layers"]),
           "--intermediate", str(s["intermediate"]), "--heads", str(s["heads"]),
           "--batch", str(s["batch"]), "--micro", str(micro), "--prompt-len", str(PROMPT_LEN),
           "--response-len", str(RESPONSE_LEN), "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(threads), "--reshard-after-forward", str(reshard)] + (
               ["--tied"] if s["tied"] else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def plot(out, rows, worlds, cores):
    """PNG plots with gnuplot (skipped with a note when gnuplot is missing)."""
    configs = sorted({r["config"] for r in rows}, key=lambda c: next(
        r["params"] for r in rows if r["config"] == c))
    data = os.path.join(out, "plot_data.dat")
    with open(data, "w") as f:
        for c in configs:
            f.write(f"# {c}\n")
            for r in (r for r in rows if r["config"] == c):
                f.write(f"{r['world']} {r['params']} {r['step_ms']} {r['tokens_per_s']} "
                        f"{r['mfu']} {r['peak_rss_mib']} {r['params_mib'] + r['grads_mib'] + r['optimizer_mib']} "
                        f"{(r['all_gather_bytes'] + r['reduce_scatter_bytes']) / MIB}\n")
            f.write("\n\n")
    timed = f"world <= {cores}"
    names = " ".join(configs)
    script = f"""set terminal pngcairo size 800,500
names = "{names}"
set datafile commentschars "#"
set key left top
set logscale y
set xlabel "world size (ranks)"
set xtics ({",".join(str(w) for w in worlds)})
set output "{out}/tokens_per_s.png"
set title "tokens/s (timed only for {timed})"
plot for [i=0:{len(configs) - 1}] "{data}" index i using 1:4 with linespoints title word(names, i+1)
set output "{out}/peak_rss_per_rank.png"
set title "peak RSS per rank (MiB) and sharded states (dashed)"
plot for [i=0:{len(configs) - 1}] "{data}" index i using 1:6 with linespoints lt i+1 title word(names, i+1), \\
     for [i=0:{len(configs) - 1}] "{data}" index i using 1:7 with lines dt 2 lt i+1 notitle
set output "{out}/bytes_per_step.png"
set title "collective bytes per step per rank (MiB)"
plot for [i=0:{len(configs) - 1}] "{data}" index i using 1:8 with linespoints title word(names, i+1)
unset logscale y
set output "{out}/mfu.png"
set title "MFU (against the measured GEMM rate per rank; timed worlds only)"
plot for [i=0:{len(configs) - 1}] "{data}" index i using 1:($1 <= {cores} ? $5 : 1/0) with linespoints title word(names, i+1)
"""
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"scaling-study: no plots ({e})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first: the heap grows over the first steps, and its page "
                    "faults on fresh memory are dear on a VM (at 110M: 130k a step after 1 "
                    "step, 2.5k after 4)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--reshard-after-forward", type=int, choices=(0, 1), default=1,
                    help="dist.reshard_after_forward: 0 keeps units gathered for the step")
    args = ap.parse_args()
    configs = args.configs or glob.glob(os.path.join(HERE, "..", "configs", "scaling", "*.toml"))
    shapes = {path: model_shape(path) for path in configs}
    worlds = [int(w) for w in args.worlds.split(",")]
    cores = os.cpu_count()
    os.makedirs(args.out, exist_ok=True)
    gemm = gemm_gflops(args.threads)  # the limit per rank
    rows = []
    for path in sorted(configs, key=lambda p: approx_params(shapes[p])):  # smallest first
        s = shapes[path]
        for world in worlds:
            print(f"scaling-study: {s['config']} at np {world} ...", file=sys.stderr, flush=True)
            r = run(args.bin, s, world, args.steps, args.warmup, args.threads,
                    args.reshard_after_forward)
            params = r["config"]["params"]
            flops = flops_per_step(s)
            ms = r["value"]
            rss = r["peak_rss_mib"]
            baseline = r["rss_before_model_mib"]
            row = {"config": s["config"], "params": params, "world": world,
                   "reshard_after_forward": bool(args.reshard_after_forward),
                   "oversubscribed": world * args.threads > cores, "step_ms": ms,
                   "tokens_per_s": r["tokens_per_s"],
                   "mfu": flops / (ms / 1e3) / (world * gemm * 1e9),
                   "gemm_gflops_per_rank": gemm,
                   "all_gather_bytes": r["all_gather_bytes_per_step"],
                   "all_gather_bytes_theory": r["all_gather_bytes_theory"],
                   "reduce_scatter_bytes": r["reduce_scatter_bytes_per_step"],
                   "reduce_scatter_bytes_theory": r["reduce_scatter_bytes_theory"],
                   **state_mib(s, params, world),
                   "peak_rss_mib": max(rss), "baseline_rss_mib": max(baseline)}
            row["activations_and_rest_mib"] = max(
                p - b for p, b in zip(rss, baseline)) - (
                row["params_mib"] + row["grads_mib"] + row["optimizer_mib"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "results.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        kept = "" if args.reshard_after_forward else (
            "Units kept gathered for the step (dist.reshard_after_forward = false). ")
        f.write(f"{kept}NPO steps, global batch {model_shape(configs[0])['batch']} pairs of "
                f"{PROMPT_LEN} + {RESPONSE_LEN} tokens, one thread per rank; fp32 GEMM rate "
                f"{gemm:.0f} GFLOP/s per thread; {cores} cores (larger worlds oversubscribed: "
                "time columns not meaningful).\n\n")
        f.write("| config | params | world | step (ms) | tokens/s | MFU | params+grads+optim per "
                "rank (MiB) | peak RSS per rank (MiB) | activations & rest (MiB) | "
                "gather + scatter per step (MiB, theory) |\n")
        f.write("|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            star = " (oversubscribed)" if r["oversubscribed"] else ""
            states = r["params_mib"] + r["grads_mib"] + r["optimizer_mib"]
            moved = (r["all_gather_bytes"] + r["reduce_scatter_bytes"]) / MIB
            theory = (r["all_gather_bytes_theory"] + r["reduce_scatter_bytes_theory"]) / MIB
            f.write(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['world']}{star} | "
                    f"{r['step_ms']:.0f} | {r['tokens_per_s']:.0f} | {r['mfu']:.2f} | "
                    f"{states:.0f} | {r['peak_rss_mib']:.0f} | "
                    f"{r['activations_and_rest_mib']:.0f} | {moved:.1f} ({theory:.1f}) |\n")
    plot(args.out, rows, worlds, cores // args.threads)
    print(f"scaling-study: wrote {args.out}/summary.md, results.csv, *.png", file=sys.stderr)


if __name__ == "__main__":
    main()
