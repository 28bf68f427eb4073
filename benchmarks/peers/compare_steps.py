#!/usr/bin/python3
"""dnpo's training steps side by side with the Python peers (step_peer.py) on the same weights and
batch: interleaved runs of `dnpo_step_bench --dump` and the peer per loss (sft, spin, npo),
`--reps` times; the median of the per-run median step times; the speed-up (peer / dnpo); whether
both did the same work (first-step losses within 1e-5 relative, or 2e-6 absolute; for SFT and
SPIN the second step's within 5e-5 relative: AdamW's first update is about lr · sign(g), so a
gradient element at fp32 rounding level, summed in another order, moves by up to 2 lr); and MFU against this machine's dense fp32 GEMM rate, measured in the
same run at the same thread count. One JSON line per result on stdout.

FLOPs per step (the issue's count): the policy 6N + 12·L·d·T per token of every sequence, the
reference 2N + 4·L·d·T per token (SPIN, NPO), and dnpo's noise head 6·d·V per response token of
the negatives (forward for s, backward through s; the authors' formulation does it at every
position, which is extra work, not counted). N = parameters in matrix products (the embedding
lookup excluded, a tied output projection counted once), T = padded sequence length.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def gemm_gflops(threads, n=1024, reps=20):
    """Dense fp32 n×n×n GEMM rate with LibTorch's BLAS at `threads` threads (best of 3)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {r["metric"]: r for r in (json.loads(line) for line in out.splitlines() if line)}


def model_flops(cfg, rows, seq_len, negative_response_tokens, loss):
    """Model FLOPs of one optimizer step (see the module docstring) for `rows` sequences of
    seq_len positions; cfg holds the model's HF config keys (hidden_size, vocab_size, ...)."""
    d, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    inter = cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = d * cfg.get("num_key_value_heads", heads) // heads
    n_matmul = L * (2 * d * d + 2 * d * kv + 3 * d * inter) + d * V
    tokens = rows * seq_len
    flops = (6 * n_matmul + 12 * L * d * seq_len) * tokens
    if loss != "sft":
        flops += (2 * n_matmul + 4 * L * d * seq_len) * tokens
    if loss == "npo":
        flops += 6 * d * V * negative_response_tokens
    return flops


def step_flops(cfg, batch, loss):
    """model_flops of the padded batch dnpo_step_bench dumped."""
    rows, seq_len = batch["attention_mask"].shape
    negative_response = int(batch["loss_mask"][rows // 2:].sum()) if loss == "npo" else 0
    return model_flops(cfg, rows, seq_len, negative_response, loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="build/bin")
    ap.add_argument("--shape", required=True, help="dnpo_step_bench shape flags")
    ap.add_argument("--losses", default="sft,spin,npo")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
    import safetensors_io

    # The GEMM rate is measured before the runs and after each repetition; the best is the
    # limit (this VM has slow phases: a single early measurement can land in one and put MFU > 1).
    gemm_runs = [gemm_gflops(args.threads)]
    work = tempfile.mkdtemp(prefix="dnpo_peer_")
    losses = args.losses.split(",")
    runs = {loss: {"dnpo": [], "peer": []} for loss in losses}
    bench = [f"{args.bin}/dnpo_step_bench", *shlex.split(args.shape), "--steps", str(args.steps),
             "--threads", str(args.threads)]
    for loss in losses:  # the inputs are a pure function of the flags: dump them once
        subprocess.run([*bench, "--loss", loss, "--dump", f"{work}/{loss}", "--dump-only"],
                       check=True)
    for rep in range(args.reps):
        for loss in losses:
            dump = f"{work}/{loss}"
            runs[loss]["dnpo"].append(run_json([*bench, "--loss", loss]))
            runs[loss]["peer"].append(run_json(
                ["/usr/bin/python3", f"{HERE}/step_peer.py", "--dump", dump,
                 "--steps", str(args.steps), "--threads", str(args.threads)]))
        gemm_runs.append(gemm_gflops(args.threads))
    gemm = max(gemm_runs)
    print(json.dumps({"name": "machine.gemm_fp32", "config": {"threads": args.threads, "n": 1024},
                      "metric": "rate", "value": gemm, "unit": "GFLOP/s",
                      "runs": [round(g, 1) for g in gemm_runs]}))
    for loss in losses:
        with open(f"{work}/{loss}/policy/config.json") as f:
            cfg = json.load(f)
        batch = safetensors_io.load_file(f"{work}/{loss}/batch.safetensors")
        flops = step_flops(cfg, batch, loss)
        dn, pe = runs[loss]["dnpo"], runs[loss]["peer"]
        same = {}
        for metric in ("first_step_loss", "second_step_loss"):
            if metric == "second_step_loss" and loss == "npo":
                continue  # the peer's second step draws its own ε
            a, b = dn[0][metric]["value"], pe[0][metric]["value"]
            rel = 1e-5 if metric == "first_step_loss" else 5e-5
            same[metric] = {"dnpo": a, "peer": b,
                            "equal": abs(a - b) <= max(rel * abs(a), 2e-6)}
        ms = statistics.median(r["step_time_median"]["value"] for r in dn)
        peer_ms = statistics.median(r["step_time_median"]["value"] for r in pe)
        config = dict(dn[0]["step_time_median"]["config"], seq_len=int(batch["input_ids"].shape[1]),
                      flops_per_step=flops)
        print(json.dumps({
            "name": f"step.{loss}", "config": config, "metric": "step_time_median",
            "value": ms, "unit": "ms", "peer": {"sft": "sft", "spin": "TRL DPO",
                                                "npo": "DNPO authors"}[loss],
            "peer_value": peer_ms, "ratio": peer_ms / ms,
            "runs": [round(r["step_time_median"]["value"], 1) for r in dn],
            "peer_runs": [round(r["step_time_median"]["value"], 1) for r in pe],
            "mfu": flops / (ms / 1e3) / (gemm * 1e9),
            "peer_mfu": flops / (peer_ms / 1e3) / (gemm * 1e9),
            "same_work": same}))
        rss = statistics.median(r["peak_rss_added"]["value"] for r in dn)
        peer_rss = statistics.median(r["peak_rss_added"]["value"] for r in pe)
        print(json.dumps({"name": f"step.{loss}", "config": config, "metric": "peak_rss_added",
                          "value": rss, "unit": "MiB", "peer_value": peer_rss,
                          "ratio": peer_rss / rss if rss > 0 else None}))
        if not all(s["equal"] for s in same.values()):
            sys.exit(f"compare_steps: {loss}: dnpo and the peer did not do the same work: {same}")


if __name__ == "__main__":
    main()
